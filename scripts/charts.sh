#!/usr/bin/env bash
# Draws the benchmark charts (docs/charts/NAME.svg) from docs/charts/NAME.tsv, and checks
# that every figure a chart shows is written, word for word, in the table it comes from.
#
#   bash scripts/charts.sh            # redraw every chart
#   bash scripts/charts.sh --check    # fail if a chart is not what its data draws, or a
#                                     # figure is missing from its source table (the test
#                                     # command runs this)
#
# A data file: header lines `# key<TAB>value` (title, note: the machine and the date,
# source: the file holding the table, ref: a reference line `x<TAB>label`, unit), then one
# row per bar: `label<TAB>quote<TAB>how`. `quote` is text of the source table (checked to
# be in it); the bar is the first figure or range in it ("5.2–6.6× cheaper": from 5.2 to
# 6.6). `how` is `as-is`, or `inverse` for a quote that gives the other way round ("1.1–1.3×
# the peer's time" drawn as 0.77–0.91). Needs only bash and awk.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=docs/charts
check=0
[ "${1:-}" = --check ] && check=1

draw() { # data.tsv -> svg on stdout
  awk -F'\t' '
    function esc(s) { gsub(/&/, "\\&amp;", s); gsub(/</, "\\&lt;", s); gsub(/>/, "\\&gt;", s); return s }
    /^# / { key = substr($1, 3); meta[key] = $2; if (key == "ref") { refx = $2 + 0; reflabel = $3 } next }
    /^$/ { next }
    {
      n++; label[n] = $1; quote[n] = $2; how[n] = $3
      q = $2
      gsub(/–/, "-", q)  # the en dash as a byte sequence: the same in mawk and gawk
      # The first figure or range: digits, then optionally a dash and digits.
      if (!match(q, /[0-9][0-9,]*(\.[0-9]+)?(-[0-9][0-9,]*(\.[0-9]+)?)?/)) {
        printf "charts: no figure in %s\n", q > "/dev/stderr"; exit 1
      }
      fig = substr(q, RSTART, RLENGTH); gsub(/,/, "", fig)
      k = split(fig, parts, "-")
      a = parts[1] + 0; b = (k > 1 ? parts[2] : parts[1]) + 0
      if ($3 == "inverse") { t = 1 / b; b = 1 / a; a = t }
      lo[n] = a; hi[n] = b
      if (b > max) max = b
    }
    END {
      if (refx > max) max = refx
      # A round axis end: the next 0.5 below 2, the next whole number below 10, else 10s.
      step = (max <= 2 ? 0.25 : (max <= 10 ? 1 : 5))
      axis = step * int(max / step + 0.999999); if (axis < max) axis += step
      left = 300; width = 420; row = 26; top = 72
      h = top + n * row + 56
      scale = width / axis
      printf "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" font-family=\"sans-serif\" font-size=\"13\">\n", left + width + 60, h, left + width + 60, h
      printf "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n"
      printf "<text x=\"10\" y=\"22\" font-size=\"15\" font-weight=\"bold\">%s</text>\n", esc(meta["title"])
      printf "<text x=\"10\" y=\"40\" fill=\"#555\">%s</text>\n", esc(meta["unit"])
      for (t = 0; t <= axis + 1e-9; t += step) {
        x = left + t * scale
        printf "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"#ddd\"/>\n", x, top - 4, x, top + n * row
        printf "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\" fill=\"#555\">%g×</text>\n", x, top + n * row + 16, t
      }
      for (i = 1; i <= n; i++) {
        y = top + (i - 1) * row
        printf "<text x=\"%d\" y=\"%d\" text-anchor=\"end\">%s</text>\n", left - 8, y + 16, esc(label[i])
        printf "<rect x=\"%d\" y=\"%d\" width=\"%.1f\" height=\"16\" fill=\"#9ecae1\"/>\n", left, y + 4, lo[i] * scale
        w = (hi[i] - lo[i]) * scale; if (w < 2) w = 2
        printf "<rect x=\"%.1f\" y=\"%d\" width=\"%.1f\" height=\"16\" fill=\"#3182bd\"/>\n", left + lo[i] * scale, y + 4, w
        txt = (lo[i] == hi[i] ? sprintf("%.2f×", lo[i]) : sprintf("%.2f–%.2f×", lo[i], hi[i]))
        printf "<text x=\"%.1f\" y=\"%d\" fill=\"#222\">%s</text>\n", left + hi[i] * scale + 6, y + 16, txt
      }
      if (refx > 0) {
        x = left + refx * scale
        printf "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"#d62728\" stroke-dasharray=\"4 3\"/>\n", x, top - 8, x, top + n * row
        printf "<text x=\"%.1f\" y=\"%d\" fill=\"#d62728\" text-anchor=\"middle\">%s</text>\n", x, top - 10, esc(reflabel)
      }
      printf "<text x=\"10\" y=\"%d\" fill=\"#555\" font-size=\"11\">%s</text>\n", h - 12, esc(meta["note"])
      printf "</svg>\n"
    }' "$1"
}

quotes_in_source() { # data.tsv: every quote is in the source file
  local src ok=0
  src=$(awk -F'\t' '$1 == "# source" {print $2}' "$1")
  [ -f "$src" ] || { echo "charts: $1 names no source file (# source)" >&2; return 1; }
  while IFS=$'\t' read -r label quote _; do
    case $label in '#'*|'') continue ;; esac
    if ! grep -qF -- "$quote" "$src"; then
      echo "charts: $1: \"$quote\" ($label) is not in $src" >&2; ok=1
    fi
  done <"$1"
  return $ok
}

status=0
for data in "$dir"/*.tsv; do
  svg=${data%.tsv}.svg
  quotes_in_source "$data" || status=1
  if [ $check = 1 ]; then
    if ! draw "$data" | cmp -s - "$svg"; then
      echo "charts: $svg is not what $data draws: run bash scripts/charts.sh" >&2; status=1
    fi
  else
    draw "$data" >"$svg"
    echo "charts: $svg" >&2
  fi
done
exit $status
