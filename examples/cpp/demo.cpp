// UTP Runtime from C++17 through the C ABI: discover the example manuals, add native
// tools written as lambdas, a business rule that denies a call, an event subscriber
// that prints what happens, and a workflow over the native tools.
//
//   c++ -std=c++17 -Iinclude examples/cpp/demo.cpp -Ltarget/debug -lutp -pthread
//   ./a.out examples/manuals
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <string>

#include "utp.h"

namespace {

// Owners for what the library hands out.
struct EngineFree { void operator()(utp_engine_t *e) const { utp_engine_free(e); } };
struct StringFree { void operator()(char *s) const { utp_string_free(s); } };
using Engine = std::unique_ptr<utp_engine_t, EngineFree>;
using String = std::unique_ptr<char, StringFree>;

// Turn an error into an exception (and free it).
void check(utp_error_t *err, const char *what) {
    if (err == nullptr) return;
    std::string message = std::string(what) + ": " + utp_error_message(err);
    utp_error_free(err);
    throw std::runtime_error(message);
}

// The number after "key": in compact JSON (0 if absent).
double number(const std::string &json, const std::string &key) {
    auto at = json.find("\"" + key + "\":");
    return at == std::string::npos ? 0.0 : std::strtod(json.c_str() + at + key.size() + 3, nullptr);
}

// The string value of "key":"..." in compact JSON (empty if absent).
std::string text(const std::string &json, const std::string &key) {
    auto at = json.find("\"" + key + "\":\"");
    if (at == std::string::npos) return "";
    at += key.size() + 4;
    return json.substr(at, json.find('"', at) - at);
}

// A native tool from a function of the arguments' JSON to the result's JSON.
// Callbacks must not let exceptions out: failures become tool errors.
using ToolBody = std::string (*)(const std::string &args);

int32_t run_tool(void *user_data, const char *args_json, utp_tool_result_t *result) {
    try {
        auto body = reinterpret_cast<ToolBody>(user_data);
        utp_error_t *err = utp_tool_result_set_json(result, body(args_json).c_str());
        utp_error_free(err);
        return err != nullptr;
    } catch (const std::exception &e) {
        utp_error_free(utp_tool_result_set_error(result, e.what()));
        return 1;
    }
}

void add_tool(utp_engine_t *engine, const char *name, ToolBody body) {
    check(utp_register_tool(engine, name, R"({"description": "demo tool written in C++"})", run_tool,
                            reinterpret_cast<void *>(body), nullptr, nullptr),
          name);
}

const char *WORKFLOW = R"({
  "name": "order",
  "inputs": {"sku": {"type": "string"}, "qty": {"type": "integer"}},
  "steps": [
    {"id": "price", "tool": "demo.price", "args": {"sku": "${{ inputs.sku }}"}},
    {"id": "total", "tool": "demo.total", "depends_on": ["price"],
     "args": {"price": "${{ steps.price.output.price }}", "qty": "${{ inputs.qty }}"}},
    {"id": "charge", "tool": "demo.charge", "depends_on": ["total"],
     "args": {"amount": "${{ steps.total.output.total }}"}}
  ],
  "outputs": {"charged": "${{ steps.charge.output.charged }}"}
})";

}  // namespace

int main(int argc, char **argv) {
    const char *manuals = argc > 1 ? argv[1] : "examples/manuals";
    try {
        utp_engine_t *raw = nullptr;
        check(utp_engine_new("{}", &raw), "engine");
        Engine engine(raw);
        std::printf("utp %s (C++)\n", utp_version());

        char *out = nullptr;
        check(utp_discover(engine.get(), manuals, &out), "discover");
        String report(out);
        int registered = 0;
        for (auto at = std::string(report.get()).find("\"registered\""); at != std::string::npos;
             at = std::string(report.get()).find("\"registered\"", at + 1))
            registered++;
        std::printf("discovered %d manuals in %s\n", registered, manuals);

        add_tool(engine.get(), "demo.price", [](const std::string &) -> std::string { return R"({"price": 12.5})"; });
        add_tool(engine.get(), "demo.total", [](const std::string &args) {
            return "{\"total\": " + std::to_string(number(args, "price") * number(args, "qty")) + "}";
        });
        add_tool(engine.get(), "demo.charge", [](const std::string &args) {
            return "{\"charged\": " + std::to_string(number(args, "amount")) + "}";
        });

        // Business rule: no charge above 100.
        check(utp_add_business_rule(
                  engine.get(), "max_charge",
                  [](void *, const char *tool, const char *action, const char *params, utp_rule_result_t *result) {
                      try {
                          if (std::string(tool) == "demo" && std::string(action) == "charge" &&
                              number(params, "amount") > 100)
                              utp_error_free(utp_rule_result_deny(result, "charges above 100 need a human"));
                      } catch (...) {
                          utp_error_free(utp_rule_result_deny(result, nullptr));  // fail closed
                      }
                  },
                  nullptr, nullptr),
              "rule");

        // Events arrive on a library thread; callbacks never let an exception out.
        uint64_t subscription = 0;
        check(utp_subscribe(
                  engine.get(), "*",
                  [](void *, const char *event_json) {
                      try {
                          std::string event(event_json), type = text(event, "type");
                          std::string what = text(event, "step_id");
                          if (what.empty()) what = text(event, "workflow");
                          if (what.empty()) what = text(event, "tool");
                          if (type.rfind("workflow.", 0) == 0 || type == "step.completed" || type == "policy.denied")
                              std::printf("  event %-18s %s\n", type.c_str(), what.c_str());
                      } catch (...) {
                      }
                  },
                  nullptr, nullptr, &subscription),
              "subscribe");
        bool drained = false;

        std::printf("call demo.charge {\"amount\": 500}\n");
        utp_error_t *err = utp_call_tool(engine.get(), "demo.charge", R"({"amount": 500})", nullptr, &out);
        String result(out);
        check(utp_events_flush(engine.get(), 2000, &drained), "flush");
        std::printf("  -> %s\n", err ? utp_error_message(err) : result.get());
        utp_error_free(err);

        std::printf("run workflow 'order' {\"sku\": \"A1\", \"qty\": 3}\n");
        check(utp_run_workflow(engine.get(), WORKFLOW, R"({"sku": "A1", "qty": 3})", nullptr, &out), "run");
        String record(out);
        check(utp_events_flush(engine.get(), 2000, &drained), "flush");
        std::string status = text(record.get(), "status");
        std::printf("  -> %s, charged %.2f\n", status.c_str(), number(record.get(), "charged"));
        return status == "completed" ? 0 : 1;
    } catch (const std::exception &e) {
        std::fprintf(stderr, "%s\n", e.what());
        return 1;
    }
}
