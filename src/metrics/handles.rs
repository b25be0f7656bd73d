//! Metric handles, registered once per label set and reused.
//!
//! Registering a metric through the `metrics` facade hashes its name and labels and looks
//! them up in the recorder on every call. The label sets of HTTP metrics are few (routes ×
//! methods × statuses), so this registry resolves each set to handles once and keeps them:
//! a request then costs a few atomic operations, and a read-mostly map lookup only when
//! its route or status is not the one its service saw first ([`Routes`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use ::metrics::{Counter, Gauge, Histogram, Label, SharedString, Unit};
use arc_swap::ArcSwap;

use crate::classify::Class;

/// Metric names and the fixed route labels.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    pub(crate) duration: SharedString,
    pub(crate) requests: SharedString,
    pub(crate) active: SharedString,
    pub(crate) unmatched: Arc<str>,
    pub(crate) overflow: Arc<str>,
}

const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE", "_OTHER",
];

/// The method label: the nine standard methods, and `_OTHER` for the rest (OpenTelemetry's
/// rule, so an attacker cannot create series with made-up methods).
#[inline]
pub(crate) fn method_index(m: &http::Method) -> usize {
    match m.as_str() {
        "GET" => 0,
        "HEAD" => 1,
        "POST" => 2,
        "PUT" => 3,
        "DELETE" => 4,
        "PATCH" => 5,
        "OPTIONS" => 6,
        "CONNECT" => 7,
        "TRACE" => 8,
        _ => 9,
    }
}

/// Status code used for the label set of calls that ended in an error, not a response.
pub(crate) const ERROR_STATUS: u16 = 0;

#[derive(Debug)]
pub(crate) struct Registry {
    names: Names,
    max_routes: usize,
    routes: ArcSwap<HashMap<Arc<str>, Arc<RouteEntry>>>,
    write: Mutex<()>,
    unmatched: OnceLock<Arc<RouteEntry>>,
    overflow: OnceLock<Arc<RouteEntry>>,
    warned_overflow: AtomicBool,
    described: OnceLock<()>,
}

#[derive(Debug)]
struct RouteEntry {
    route: Arc<str>,
    methods: [OnceLock<Arc<MethodEntry>>; 10],
}

#[derive(Debug)]
pub(crate) struct MethodEntry {
    method: &'static str,
    route: Arc<str>,
    names: Names,
    pub(crate) active: Gauge,
    /// The first status recorded: most of a route's responses share it, and it is found
    /// without reading the list.
    first: OnceLock<Arc<StatusEntry>>,
    statuses: ArcSwap<Vec<Arc<StatusEntry>>>,
    write: Mutex<()>,
}

#[derive(Debug)]
pub(crate) struct StatusEntry {
    status: u16,
    class: Class,
    pub(crate) duration: Histogram,
    pub(crate) requests: Counter,
}

impl Registry {
    pub(crate) fn new(names: Names, max_routes: usize) -> Self {
        Self {
            names,
            max_routes,
            routes: ArcSwap::from_pointee(HashMap::new()),
            write: Mutex::new(()),
            unmatched: OnceLock::new(),
            overflow: OnceLock::new(),
            warned_overflow: AtomicBool::new(false),
            described: OnceLock::new(),
        }
    }

    fn describe(&self) {
        self.described.get_or_init(|| {
            ::metrics::describe_histogram!(
                self.names.duration.clone(),
                Unit::Seconds,
                "Duration of HTTP server requests, until the response body ended."
            );
            ::metrics::describe_counter!(
                self.names.requests.clone(),
                "HTTP server requests finished, by status and outcome (the shared classifier)."
            );
            ::metrics::describe_gauge!(
                self.names.active.clone(),
                "HTTP server requests in flight (until the response body ended or was dropped)."
            );
        });
    }

    /// The entry of a route; `None` route is "unmatched".
    #[inline]
    fn route_entry(&self, route: Option<&str>) -> Arc<RouteEntry> {
        match route {
            None => self.fixed(&self.unmatched, &self.names.unmatched),
            Some(r) => {
                let routes = self.routes.load();
                match routes.get(r) {
                    Some(e) => Arc::clone(e),
                    // Full: no lock, no new series; every further route is overflow.
                    None if routes.len() >= self.max_routes => self.overflowed(),
                    None => self.insert_route(r),
                }
            }
        }
    }

    fn fixed(&self, slot: &OnceLock<Arc<RouteEntry>>, label: &Arc<str>) -> Arc<RouteEntry> {
        Arc::clone(slot.get_or_init(|| Arc::new(RouteEntry::new(Arc::clone(label)))))
    }

    fn overflowed(&self) -> Arc<RouteEntry> {
        if !self.warned_overflow.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                max_routes = self.max_routes,
                "http metrics: too many distinct route labels; counting the rest under the overflow label"
            );
        }
        self.fixed(&self.overflow, &self.names.overflow)
    }

    #[cold]
    fn insert_route(&self, route: &str) -> Arc<RouteEntry> {
        let _g = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.routes.load();
        if let Some(e) = current.get(route) {
            return Arc::clone(e);
        }
        if current.len() >= self.max_routes {
            return self.overflowed();
        }
        let mut next = HashMap::clone(&current);
        let entry = Arc::new(RouteEntry::new(Arc::from(route)));
        next.insert(Arc::clone(&entry.route), Arc::clone(&entry));
        self.routes.store(Arc::new(next));
        entry
    }

    #[cold]
    fn new_method(&self, method: &'static str, route: &Arc<str>) -> MethodEntry {
        self.describe();
        let active = ::metrics::gauge!(
            self.names.active.clone(),
            "http.request.method" => method,
            "http.route" => route.to_string()
        );
        MethodEntry {
            method,
            route: Arc::clone(route),
            names: self.names.clone(),
            active,
            first: OnceLock::new(),
            statuses: ArcSwap::from_pointee(Vec::new()),
            write: Mutex::new(()),
        }
    }
}

impl RouteEntry {
    fn new(route: Arc<str>) -> Self {
        Self {
            route,
            methods: Default::default(),
        }
    }

    #[inline]
    fn method(&self, method: &http::Method, registry: &Registry) -> Arc<MethodEntry> {
        let idx = method_index(method);
        Arc::clone(
            self.methods[idx]
                .get_or_init(|| Arc::new(registry.new_method(METHODS[idx], &self.route))),
        )
    }
}

/// One service's way into the registry. `Router::layer` gives each route (and method) a
/// service of its own, so the route a service saw first is kept at hand: a request for it
/// takes no shared map lookup (no hashing, no read of the shared map's pointer). A service
/// that serves several routes (a `route_fn` label) finds the others in the registry.
#[derive(Debug)]
pub(crate) struct Routes {
    registry: Arc<Registry>,
    first: OnceLock<Arc<RouteEntry>>,
}

impl Routes {
    pub(crate) fn new(registry: Arc<Registry>) -> Self {
        Self {
            registry,
            first: OnceLock::new(),
        }
    }

    /// The handles for a request's method and route; `None` route is "unmatched".
    #[inline]
    pub(crate) fn entry(&self, method: &http::Method, route: Option<&str>) -> Arc<MethodEntry> {
        if let (Some(r), Some(first)) = (route, self.first.get())
            && *first.route == *r
        {
            return first.method(method, &self.registry);
        }
        let e = self.registry.route_entry(route);
        if route.is_some_and(|r| *e.route == *r) {
            // Not the overflow entry, whose label is not the route's.
            let _ = self.first.set(Arc::clone(&e));
        }
        e.method(method, &self.registry)
    }
}

impl MethodEntry {
    /// The handles for one status (or [`ERROR_STATUS`]) and class.
    #[inline]
    pub(crate) fn status(&self, status: u16, class: Class) -> Arc<StatusEntry> {
        if let Some(e) = self.first.get()
            && e.status == status
            && e.class == class
        {
            return Arc::clone(e);
        }
        if let Some(e) = self
            .statuses
            .load()
            .iter()
            .find(|e| e.status == status && e.class == class)
        {
            return Arc::clone(e);
        }
        self.insert_status(status, class)
    }

    #[cold]
    fn insert_status(&self, status: u16, class: Class) -> Arc<StatusEntry> {
        let _g = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.statuses.load();
        if let Some(e) = current
            .iter()
            .find(|e| e.status == status && e.class == class)
        {
            return Arc::clone(e);
        }
        let status_label: SharedString = if status == ERROR_STATUS {
            "error".into()
        } else {
            status.to_string().into()
        };
        let labels = [
            Label::from_static_parts("http.request.method", self.method),
            Label::new("http.route", self.route.to_string()),
            Label::new("http.response.status_code", status_label),
        ];
        let duration = ::metrics::histogram!(self.names.duration.clone(), labels.iter());
        let mut with_outcome = labels.to_vec();
        with_outcome.push(Label::from_static_parts("outcome", class.as_str()));
        let requests = ::metrics::counter!(self.names.requests.clone(), with_outcome.iter());
        let entry = Arc::new(StatusEntry {
            status,
            class,
            duration,
            requests,
        });
        let mut next = Vec::clone(&current);
        next.push(Arc::clone(&entry));
        self.statuses.store(Arc::new(next));
        let _ = self.first.set(Arc::clone(&entry));
        entry
    }
}
