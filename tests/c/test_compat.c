/*
 * python-utcp compatibility cases of issue 26 through the C ABI: a python-utcp config
 * with `manual_call_templates` (and a malformed one, named in the error), a manual
 * given as YAML text to utp_register_manual(), and a `text` tool whose content is a
 * JSON Schema document (its `$schema`, `$id`, `$ref`... are not variables).
 * Prints "N passed, M failed" last and exits non-zero on any failure.
 */
#include <stdio.h>
#include <string.h>

#include "check.h"

static void test_manual_call_templates(void) {
    const char *config =
        "{\"manual_call_templates\": [{\"name\": \"inline\", \"call_template_type\": \"text\","
        " \"content\": \"tools:\\n  - name: echo\\n    tool_call_template: {call_template_type: text, content: hi}\\n\"}]}";
    utp_engine_t *engine = NULL;
    if (!ok(utp_engine_new(config, &engine), "engine_new with manual_call_templates")) return;
    char *result = NULL;
    if (ok(utp_call_tool(engine, "inline.echo", "{}", NULL, &result), "call inline.echo")) {
        CHECK(strcmp(result, "\"hi\"") == 0, "result %s", result);
        utp_string_free(result);
    }
    utp_engine_free(engine);

    utp_engine_t *none = NULL;
    utp_error_t *err = utp_engine_new("{\"manual_call_templates\": [{\"name\": \"w\", \"call_template_type\": \"http\"}]}", &none);
    CHECK(err != NULL && find(utp_error_message(err), "`manual_call_templates[0]` ('w'): invalid http template") >= 0,
          "message %s", err ? utp_error_message(err) : "(none)");
    CHECK(none == NULL, "no engine on error");
    expect_code(err, UTP_ERR_INVALID_ARGUMENT, "malformed manual_call_templates");
}

static void test_yaml_text_and_schema_keywords(void) {
    utp_engine_t *engine = NULL;
    if (!ok(utp_engine_new("{}", &engine), "engine_new")) return;
    const char *yaml =
        "name: notes\n"
        "tools:\n"
        "  - name: schema\n"
        "    tool_call_template:\n"
        "      call_template_type: text\n"
        "      content: '{\"$schema\": \"https://json-schema.org/draft/2020-12/schema\", \"$ref\": \"#/$defs/a\", "
        "\"$defs\": {\"a\": {\"$comment\": \"c\"}}}'\n";
    char *names = NULL;
    if (ok(utp_register_manual(engine, yaml, NULL, &names), "register YAML text")) {
        CHECK(strcmp(names, "[\"notes.schema\"]") == 0, "names %s", names);
        utp_string_free(names);
    }
    char *result = NULL;
    if (ok(utp_call_tool(engine, "notes.schema", "{}", NULL, &result), "call a text tool holding a schema")) {
        CHECK(find(result, "$schema") >= 0 && find(result, "#/$defs/a") >= 0, "result %s", result);
        utp_string_free(result);
    }
    names = NULL;
    expect_code(utp_register_manual(engine, "- a\n- list\n", NULL, &names), UTP_ERR_INVALID_MANUAL, "YAML list");
    utp_engine_free(engine);
}

int main(void) {
    test_manual_call_templates();
    test_yaml_text_and_schema_keywords();
    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
