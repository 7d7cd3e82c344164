//! Native Python tools: `register_tool` turns a Python function (sync or `async def`)
//! into a core `NativeHandler`, run on an engine thread (engine_threads.rs).

use std::sync::Arc;

use pyo3::prelude::*;
use serde_json::Value;
use utp_core::{Error, ErrorCode, NativeHandler};

use crate::callbacks::{Callback, Slot};
use crate::engine::PyEngine;
use crate::errors::{IntoPyResult, guarded, invalid};
use crate::host_calls::{Callback as Kind, is_coroutine_function, run_python};
use crate::json::{to_json, to_py, type_name};

/// Run a Python tool function on the calling thread (the host's, or an engine thread): `fn(args)`, and
/// when it returns an awaitable (an `async def` tool), `asyncio.run` it there.
fn call_python_tool(py: Python<'_>, func: &Py<PyAny>, tool: &str, args: &Value) -> Result<Value, Error> {
    let failed = |e: PyErr| {
        crate::host_calls::note_interrupt(py, &e);
        let kind = e.get_type(py).name().map(|n| n.to_string()).unwrap_or_else(|_| "Exception".into());
        Error::with_code(ErrorCode::ToolFailed, format!("tool '{tool}' raised {kind}: {}", e.value(py)))
    };
    let args = to_py(py, args).map_err(failed)?;
    let mut result = func.bind(py).call1((args,)).map_err(failed)?;
    let inspect = py.import("inspect").map_err(failed)?;
    if inspect.call_method1("isawaitable", (&result,)).and_then(|b| b.is_truthy()).map_err(failed)? {
        result = py.import("asyncio").and_then(|a| a.call_method1("run", (result,))).map_err(failed)?;
    }
    to_json(py, &result, 0).map_err(|e| {
        Error::with_code(
            ErrorCode::ToolFailed,
            format!("tool '{tool}' returned a value without a JSON form: {}", e.value(py)),
        )
    })
}

#[pymethods]
impl PyEngine {
    /// Register a Python function as the native tool `name` ("manual.tool"; the
    /// manual is created when missing). `func(args: dict)` may be sync or `async def`
    /// and runs on the thread that waits for the call or on an engine thread
    /// (docs/architecture.md, "Host callbacks on the calling thread"); what it raises fails the call with
    /// `ToolFailedError` naming the tool. Returns the full tool name.
    #[pyo3(signature = (name, func, inputs=None, outputs=None, description="", tags=None))]
    #[allow(clippy::too_many_arguments)]
    fn register_tool(
        &self,
        py: Python<'_>,
        name: &str,
        func: Bound<'_, PyAny>,
        inputs: Option<&Bound<'_, PyAny>>,
        outputs: Option<&Bound<'_, PyAny>>,
        description: &str,
        tags: Option<Vec<String>>,
    ) -> PyResult<String> {
        guarded(py, || {
            if !func.is_callable() {
                return Err(invalid(py, format!("func must be callable, got {}", type_name(&func))));
            }
            let schema =
                |v: Option<&Bound<'_, PyAny>>| v.filter(|v| !v.is_none()).map(|v| to_json(py, v, 0)).transpose();
            let (inputs, outputs) = (schema(inputs)?, schema(outputs)?);
            // A sync function may run on the thread that waits for the call (host_calls.rs).
            let here = !is_coroutine_function(&func)?;
            let callback = Callback::new(func.unbind());
            let held = callback.clone();
            let tool = name.to_string();
            let handler: NativeHandler = Arc::new(move |args: Value| {
                let (callback, tool) = (held.clone(), tool.clone());
                Box::pin(async move {
                    run_python(Kind::Tool, here, move |py| match callback.get(py) {
                        Some(func) => call_python_tool(py, &func, &tool, &args),
                        None => Err(Error::with_code(
                            ErrorCode::ToolFailed,
                            format!("tool '{tool}': its Python function was released (engine closed)"),
                        )),
                    })
                    .await
                    .map_err(|e| Error::with_code(ErrorCode::Internal, format!("Python tool thread failed: {e}")))?
                })
            });
            let r = self.running(py)?;
            let full = r
                .engine
                .register_tool(name, handler, inputs, outputs, description, tags.unwrap_or_default())
                .py_err(py)?;
            self.keep(Slot::Tool(full.clone()), callback);
            Ok(full)
        })
    }
}
