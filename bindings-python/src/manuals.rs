//! Manuals and the tool catalogue: discover, register and remove manuals; list,
//! look up and search their tools.

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use utp_core::ManualSource;

use crate::callbacks::Slot;
use crate::engine::PyEngine;
use crate::errors::{IntoPyResult, guarded, invalid};
use crate::json::{path_like, to_json, to_py, type_name};

fn tool_values<'py>(py: Python<'py>, tools: &[Arc<utp_core::RegisteredTool>]) -> PyResult<Bound<'py, PyList>> {
    let list = PyList::empty(py);
    for tool in tools {
        list.append(to_py(py, &tool.to_value())?)?;
    }
    Ok(list)
}

#[pymethods]
impl PyEngine {
    /// Discover manuals under a directory, in a file, or at a URL; returns the names
    /// of the manuals registered. Files that fail are reported by `discover_report`.
    fn discover(&self, py: Python<'_>, target: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
        guarded(py, || {
            let target = path_like(py, target, "target")?;
            let r = self.running(py)?;
            let report = r.block_on(py, r.engine.discover(&target)).py_err(py)?;
            Ok(report.registered())
        })
    }

    /// Like `discover`, returning the full report: one entry per file with its outcome.
    fn discover_report<'py>(&self, py: Python<'py>, target: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        guarded(py, || {
            let target = path_like(py, target, "target")?;
            let r = self.running(py)?;
            let report = r.block_on(py, r.engine.discover(&target)).py_err(py)?;
            to_py(py, &report.to_value())
        })
    }

    /// Register a manual (a dict, a file path, or an http(s) URL); returns its tools' names.
    #[pyo3(signature = (manual, name=None))]
    fn register_manual(&self, py: Python<'_>, manual: &Bound<'_, PyAny>, name: Option<&str>) -> PyResult<Vec<String>> {
        guarded(py, || {
            let source = if manual.is_instance_of::<PyDict>() {
                ManualSource::Inline(to_json(py, manual, 0)?)
            } else {
                let text = path_like(py, manual, "manual").map_err(|_| {
                    invalid(py, format!("manual must be a dict, a path or a URL; got {}", type_name(manual)))
                })?;
                ManualSource::from_text(&text).py_err(py)?
            };
            let r = self.running(py)?;
            r.block_on(py, r.engine.register_manual(source, name)).py_err(py)
        })
    }

    /// Remove a manual and its tools; False if no manual had that name.
    fn deregister_manual(&self, py: Python<'_>, name: &str) -> PyResult<bool> {
        guarded(py, || {
            let removed = self.running(py)?.engine.deregister_manual(name);
            if removed {
                let prefix = format!("{name}.");
                drop(self.release_where(|s| matches!(s, Slot::Tool(t) if t.starts_with(&prefix))));
            }
            Ok(removed)
        })
    }

    /// Every registered tool as a dict (UTCP tool JSON, `name` = `manual.tool`), by name.
    fn tools<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        guarded(py, || {
            let r = self.running(py)?;
            let tools = crate::host_exit::detach(py, || r.engine.tools());
            tool_values(py, &tools)
        })
    }

    /// One tool by its full name `manual.tool`.
    fn tool<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
        guarded(py, || {
            let tool = self.running(py)?.engine.tool(name).py_err(py)?;
            to_py(py, &tool.to_value())
        })
    }

    /// Tools ranked by relevance to `query` (name, tags, description, parameters).
    /// `limit=0` returns every match; `tags` keeps tools carrying any of them.
    #[pyo3(signature = (query, limit=10, tags=None))]
    fn search_tools<'py>(
        &self,
        py: Python<'py>,
        query: &str,
        limit: usize,
        tags: Option<Vec<String>>,
    ) -> PyResult<Bound<'py, PyList>> {
        guarded(py, || {
            let r = self.running(py)?;
            let tags = tags.unwrap_or_default();
            let found = crate::host_exit::detach(py, || r.engine.search_tools(query, limit, &tags));
            tool_values(py, &found)
        })
    }

    /// Names of the registered manuals, sorted.
    fn manuals(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        guarded(py, || Ok(self.running(py)?.engine.manuals()))
    }

    /// The namespaced variables (e.g. `weather_API_KEY`) a manual or tool needs.
    fn required_variables(&self, py: Python<'_>, name: &str) -> PyResult<Vec<String>> {
        guarded(py, || self.running(py)?.engine.required_variables(name).py_err(py))
    }
}
