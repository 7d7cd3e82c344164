//! The planner on the engine (docs/design.md §10): `plan` and `run_request`.

use std::sync::Arc;

use serde_json::{Value, json};

use super::Engine;
use crate::error::{Error, ErrorCode, Result};
use crate::events::{Event, kinds};
use crate::planner::{
    AnthropicClient, LlmClient, LlmMessage, LlmRequest, OpenAiClient, PlanOptions, PlannedWorkflow, PlannerConfig,
    Provider, Usage, extract_json, offline, planner_error, prompt, resolve_secret,
};
use crate::workflow::{RunOptions, WorkflowSource};

/// A request longer than this is refused (it is sent to the model as is).
const MAX_REQUEST: usize = 16_000;
/// The model's previous answer, as sent back in a repair round, is cut to this.
const MAX_ECHO: usize = 16_000;

impl Engine {
    /// The config's `planner` section, parsed.
    pub fn planner_config(&self) -> Result<PlannerConfig> {
        PlannerConfig::from_value(self.config().other.get("planner"))
    }

    /// The model the config names (`None` for the offline planner), its key resolved.
    pub fn llm_client(&self, config: &PlannerConfig) -> Result<Option<Arc<dyn LlmClient>>> {
        let key = match &config.api_key {
            Some(raw) => Some(resolve_secret(self.variables(), raw)?),
            None => None,
        };
        let allow_private = self.config().calls.allow_private_networks;
        Ok(match config.provider {
            Provider::Offline => None,
            Provider::OpenAi => Some(Arc::new(OpenAiClient::new(config, key, self.http_client()?, allow_private)?)),
            Provider::Anthropic => {
                Some(Arc::new(AnthropicClient::new(config, key, self.http_client()?, allow_private)?))
            }
        })
    }

    /// Plan a workflow for `request` (docs/design.md §10): ask the model (or the offline
    /// planner), validate the answer like a hand-written workflow, send validation
    /// errors back for at most `planner.max_repairs` rounds. Emits `workflow.planned`.
    /// `PLANNER` when no valid workflow came out (with the last problems);
    /// `TIMEOUT` / `TRANSPORT` when the model could not be reached.
    pub async fn plan(&self, request: &str, options: PlanOptions) -> Result<PlannedWorkflow> {
        if request.trim().is_empty() {
            return Err(Error::InvalidArgument("the request is empty: say what the workflow should do".into()));
        }
        if request.len() > MAX_REQUEST {
            return Err(Error::InvalidArgument(format!(
                "the request is {} bytes, at most {MAX_REQUEST}",
                request.len()
            )));
        }
        let config = self.planner_config()?;
        let client = match options.client.clone() {
            Some(c) => Some(c),
            None => self.llm_client(&config)?,
        };
        let planned = match client {
            None => {
                let definition = offline::plan(&self.catalogue(), request, &options, config.max_tools)?;
                let workflow = self.workflow(WorkflowSource::Definition(definition.clone())).map_err(|e| {
                    planner_error(format!("the offline plan does not validate ({e}); a model is needed"))
                })?;
                PlannedWorkflow {
                    definition,
                    workflow,
                    provider: "offline".into(),
                    model: String::new(),
                    rounds: 0,
                    usage: Usage::default(),
                }
            }
            Some(client) => self.plan_with_model(client.as_ref(), request, &options, &config).await?,
        };
        let event = Event::new(kinds::WORKFLOW_PLANNED)
            .workflow(planned.workflow.name.clone())
            .context(options.tenant.as_deref(), options.session.as_deref())
            .data(json!({
                "request": request,
                "provider": planned.provider,
                "model": planned.model,
                "rounds": planned.rounds,
                "usage": planned.usage.to_value(),
                "definition": planned.definition,
            }));
        self.events().publish(event);
        Ok(planned)
    }

    async fn plan_with_model(
        &self,
        client: &dyn LlmClient,
        request: &str,
        options: &PlanOptions,
        config: &PlannerConfig,
    ) -> Result<PlannedWorkflow> {
        let tools = prompt::candidate_tools(&self.catalogue(), request, config.max_tools);
        if tools.is_empty() {
            return Err(planner_error("no tools are registered: register manuals before planning"));
        }
        let state = options.session.as_deref().map(|s| self.session_state(options.tenant.as_deref(), Some(s)));
        let mut messages =
            vec![LlmMessage::user(prompt::user_prompt(&tools, request, options.inputs.as_ref(), state.as_ref()))];
        let system = prompt::system_prompt();
        let schema = prompt::workflow_schema();
        let mut usage = Usage::default();
        let mut last = String::new();
        let rounds = config.max_repairs.saturating_add(1);
        for round in 1..=rounds {
            let request_ = LlmRequest {
                system: system.clone(),
                messages: messages.clone(),
                schema: Some(schema.clone()),
                max_tokens: config.max_tokens,
            };
            let answer = client.complete(request_).await?;
            usage.add(answer.usage);
            let parsed = match answer.json.clone() {
                Some(v) => Ok(v),
                None => extract_json(&answer.text),
            };
            let problems = match parsed {
                Err(e) => e,
                Ok(v) if !v.is_object() => {
                    "the answer must be one JSON object (the workflow), not a list or a scalar".into()
                }
                Ok(definition) => match self.workflow(WorkflowSource::Definition(definition.clone())) {
                    Ok(workflow) => {
                        return Ok(PlannedWorkflow {
                            definition,
                            workflow,
                            provider: client.provider().to_string(),
                            model: client.model().to_string(),
                            rounds: round,
                            usage,
                        });
                    }
                    Err(e) if matches!(e.code(), ErrorCode::ValidationFailed | ErrorCode::InvalidArgument) => {
                        e.to_string()
                    }
                    Err(e) => return Err(e),
                },
            };
            tracing::debug!(round, "planner: the answer did not validate");
            last = problems;
            if round < rounds {
                messages.push(LlmMessage::assistant(cut(&answer.text, MAX_ECHO)));
                messages.push(LlmMessage::user(prompt::repair_prompt(&last)));
            }
        }
        Err(planner_error(format!(
            "the model ({} {}) gave no valid workflow in {rounds} round(s) (planner.max_repairs = {}); the last problems: {last}",
            client.provider(),
            client.model(),
            config.max_repairs
        )))
    }

    /// Plan `request` and run the plan with `inputs` (docs/design.md §4 `run(request)`): the
    /// execution record (docs/design.md §7) with `plan` added (`definition`, `provider`,
    /// `model`, `rounds`, `usage`). The caller's inputs are described to the planner by
    /// name and type only.
    pub async fn run_request(&self, request: &str, inputs: Value, options: RunOptions) -> Result<Value> {
        let plan = PlanOptions {
            tenant: options.tenant.clone(),
            session: options.session.clone(),
            inputs: Some(inputs.clone()),
            client: None,
        };
        self.run_request_with(request, inputs, plan, options).await
    }

    /// [`Engine::run_request`] with explicit plan options (a host's own model).
    pub async fn run_request_with(
        &self,
        request: &str,
        inputs: Value,
        plan: PlanOptions,
        options: RunOptions,
    ) -> Result<Value> {
        let planned = self.plan(request, plan).await?;
        let mut record =
            self.run_workflow(WorkflowSource::Compiled(planned.workflow.clone()), inputs, options).await?.to_json();
        if let Some(m) = record.as_object_mut() {
            m.insert("plan".into(), planned.to_value());
        }
        Ok(record)
    }
}

fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}
