/*
 * C ABI tests for the SQLite store (docs/design.md §9): utp_engine_new() with "store" in the
 * config (a string and a mapping), a run committed by one engine and read back by
 * the next (utp_execution, utp_executions, utp_stored_events with its filters),
 * UTP_ERR_STORE for a second engine on a file another one has open and for a file
 * that is not a database, recovery of a run whose process was killed with SIGKILL
 * (a forked child; the steps it committed are not called again, utp_recover()
 * resumes the run once its tool is registered), a run whose tools the config names
 * resumed by utp_engine_new() itself and finishing on the engine's threads, a run
 * left by utp_engine_free() mid-run resumed by the next engine on the file, session
 * state across engines,
 * utp_prune(), the memory store's answers, and misuse (NULLs, invalid UTF-8, bad
 * filters).
 *
 * Prints "N passed, M failed" last and exits non-zero on any failure.
 */
#define _POSIX_C_SOURCE 200809L

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"

/* ---------------------------------------------------------------- helpers */

static char dir[64];        /* the scratch folder of this run */
static char db[128];        /* dir/utp.db */
static char calls_path[128]; /* dir/calls.txt: one step name per tool call */

static void sleep_ms(long ms) {
    struct timespec pause = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&pause, NULL);
}

/* The calls file as one string ("s0 s1 s2 "), in buf. */
static const char *calls(char *buf, size_t size) {
    buf[0] = '\0';
    FILE *f = fopen(calls_path, "r");
    if (f == NULL) return buf;
    char line[32];
    size_t used = 0;
    while (fgets(line, sizeof line, f) != NULL) {
        line[strcspn(line, "\n")] = '\0';
        int n = snprintf(buf + used, size - used, "%s ", line);
        if (n < 0 || (size_t)n >= size - used) break;
        used += (size_t)n;
    }
    fclose(f);
    return buf;
}

/* An engine on `store_json` (the value of "store"), or NULL (the error is counted). */
static utp_engine_t *open_engine(const char *store_json, const char *what) {
    char config[512];
    snprintf(config, sizeof config, "{\"store\": %s}", store_json);
    utp_engine_t *engine = NULL;
    if (!ok(utp_engine_new(config, &engine), what)) return NULL;
    return engine;
}

static utp_engine_t *open_db(const char *what) {
    char store[192];
    snprintf(store, sizeof store, "\"sqlite:%s\"", db);
    return open_engine(store, what);
}

/* ------------------------------------------------------------------ tools */

/* t.step {name, n} -> {"n": n}; appends `name` to the calls file. With user_data
 * non-NULL (the crashing child) it hangs in step s2 until the process is killed. */
static int32_t step_tool(void *user_data, const char *args_json, utp_tool_result_t *result) {
    char name[32];
    json_str(args_json, "name", name, sizeof name);
    FILE *f = fopen(calls_path, "a");
    if (f != NULL) {
        fprintf(f, "%s\n", name);
        fclose(f);
    }
    if (user_data != NULL && strcmp(name, "s2") == 0) {
        for (;;) sleep_ms(50); /* killed here, with SIGKILL, by the test */
    }
    char out[64];
    snprintf(out, sizeof out, "{\"n\": %ld}", json_num(args_json, "n"));
    utp_error_t *err = utp_tool_result_set_json(result, out);
    int32_t status = err != NULL;
    utp_error_free(err);
    return status;
}

static const char *STEP_SPEC = "{\"inputs\": {\"type\": \"object\"}}";

/* A chain of 4 steps: each gets its name and the previous output + 1. */
static const char *CHAIN =
    "{\"name\": \"chain\", \"steps\": ["
    "{\"id\": \"s0\", \"tool\": \"t.step\", \"args\": {\"name\": \"s0\", \"n\": 0}},"
    "{\"id\": \"s1\", \"tool\": \"t.step\", \"depends_on\": [\"s0\"],"
    " \"args\": {\"name\": \"s1\", \"n\": \"${{ steps.s0.output.n + 1 }}\"}},"
    "{\"id\": \"s2\", \"tool\": \"t.step\", \"depends_on\": [\"s1\"],"
    " \"args\": {\"name\": \"s2\", \"n\": \"${{ steps.s1.output.n + 1 }}\"}},"
    "{\"id\": \"s3\", \"tool\": \"t.step\", \"depends_on\": [\"s2\"],"
    " \"args\": {\"name\": \"s3\", \"n\": \"${{ steps.s2.output.n + 1 }}\"}}"
    "], \"outputs\": {\"last\": \"${{ steps.s3.output.n }}\"}}";

/* ------------------------------------------------------------------ tests */

/* A forked child that crashes mid-run: its pid and the execution id it sent. */
struct child {
    pid_t pid;
    int fd;
    char id[64];
};

/* Fork `body(fd)` (which writes an execution id to fd, then hangs). Called before this
 * process has any library threads, so that fork() is safe. */
static void start_child(struct child *c, void (*body)(int fd)) {
    int fds[2];
    c->pid = -1;
    c->fd = -1;
    c->id[0] = '\0';
    if (pipe(fds) != 0) return;
    /* Not inherited by the programs the child's engine runs (CLI tools): the pipe must
     * reach EOF when the child dies. */
    fcntl(fds[0], F_SETFD, FD_CLOEXEC);
    fcntl(fds[1], F_SETFD, FD_CLOEXEC);
    c->pid = fork();
    if (c->pid == 0) {
        close(fds[0]);
        body(fds[1]);
        _exit(0);
    }
    close(fds[1]);
    c->fd = fds[0];
}

/* Read the child's execution id, wait until `path` (a calls file) shows `step`, then
 * kill the child with SIGKILL. 1 when all of that went as planned. */
static int crash_child(struct child *c, const char *path, const char *step) {
    CHECK(c->pid > 0, "fork failed");
    if (c->pid <= 0) return 0;
    ssize_t got = 0; /* up to the newline after the id */
    while (got < (ssize_t)sizeof c->id - 1 && (got == 0 || c->id[got - 1] != '\n')) {
        ssize_t n = read(c->fd, c->id + got, sizeof c->id - 1 - (size_t)got);
        if (n <= 0) break;
        got += n;
    }
    if (got > 0 && c->id[got - 1] == '\n') got--;
    c->id[got > 0 ? got : 0] = '\0';
    close(c->fd);
    CHECK(got > 0, "the child sent no execution id");
    int started = 0;
    for (int waited = 0; waited < 120000 && !started; waited += 20) {
        FILE *f = fopen(path, "r");
        char text[256] = {0};
        if (f != NULL) {
            size_t n = fread(text, 1, sizeof text - 1, f);
            text[n] = '\0';
            fclose(f);
        }
        started = strstr(text, step) != NULL;
        if (!started) sleep_ms(20);
    }
    CHECK(started, "step %s never started in the child", step);
    kill(c->pid, SIGKILL);
    int status = 0;
    waitpid(c->pid, &status, 0);
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "child status %d", status);
    return got > 0 && started;
}

/* Child of test_crash_and_recover: starts CHAIN over a C tool and hangs in s2. */
static void tool_child(int out_fd) {
    utp_engine_t *engine = NULL;
    char config[256];
    snprintf(config, sizeof config, "{\"store\": \"sqlite:%s\"}", db);
    if (utp_engine_new(config, &engine) != NULL) _exit(2);
    if (utp_register_tool(engine, "t.step", STEP_SPEC, step_tool, (void *)1, NULL, NULL) != NULL) _exit(3);
    char *id = NULL;
    if (utp_start_workflow(engine, CHAIN, NULL, "{\"session\": \"crash\"}", &id) != NULL) _exit(4);
    char line[96];
    snprintf(line, sizeof line, "%s\n", id);
    size_t len = strlen(line);
    if (write(out_fd, line, len) != (ssize_t)len) _exit(5);
    close(out_fd);
    for (;;) sleep_ms(1000);
}

/* A config with CLI tools s0, s1, s2 that append their names to dir/<tag>_calls.txt
 * (s1 then waits for the file dir/<tag>_gate, or for dir to be removed), on the
 * store dir/<tag>.db. */
static void shell_config(char *buf, size_t size, const char *tag) {
    snprintf(buf, size,
             "{\"store\": \"sqlite:%s/%s.db\", \"manuals\": [{\"name\": \"sh\", \"tools\": ["
             "{\"name\": \"s0\", \"tool_call_template\": {\"call_template_type\": \"cli\", \"commands\": "
             "[{\"command\": \"sh -c 'echo s0 >> %s/%s_calls.txt'\"}]}},"
             "{\"name\": \"s1\", \"tool_call_template\": {\"call_template_type\": \"cli\", \"commands\": "
             "[{\"command\": \"sh -c 'echo s1 >> %s/%s_calls.txt; while [ ! -f %s/%s_gate ] && [ -d %s ]; do sleep 0.05; done'\"}]}},"
             "{\"name\": \"s2\", \"tool_call_template\": {\"call_template_type\": \"cli\", \"commands\": "
             "[{\"command\": \"sh -c 'echo s2 >> %s/%s_calls.txt'\"}]}}]}]}",
             dir, tag, dir, tag, dir, tag, dir, tag, dir, dir, tag);
}

/* The contents of dir/<tag>_calls.txt, in buf. */
static const char *shell_calls(const char *tag, char *buf, size_t size) {
    char path[160];
    snprintf(path, sizeof path, "%s/%s_calls.txt", dir, tag);
    buf[0] = '\0';
    FILE *f = fopen(path, "r");
    if (f != NULL) {
        size_t n = fread(buf, 1, size - 1, f);
        buf[n] = '\0';
        fclose(f);
    }
    return buf;
}

/* Create dir/<tag>_gate: step s1 (and any orphaned shell of it) finishes. */
static void open_gate(const char *tag) {
    char path[160];
    snprintf(path, sizeof path, "%s/%s_gate", dir, tag);
    FILE *f = fopen(path, "w");
    if (f != NULL) fclose(f);
}

static const char *SHELL_CHAIN =
    "{\"name\": \"shell\", \"steps\": [{\"id\": \"a\", \"tool\": \"sh.s0\"},"
    "{\"id\": \"b\", \"tool\": \"sh.s1\", \"depends_on\": [\"a\"]},"
    "{\"id\": \"c\", \"tool\": \"sh.s2\", \"depends_on\": [\"b\"]}]}";

/* Child of test_open_resumes: starts SHELL_CHAIN and hangs in step b. */
static void shell_child(int out_fd) {
    char config[2048];
    shell_config(config, sizeof config, "shell");
    utp_engine_t *engine = NULL;
    if (utp_engine_new(config, &engine) != NULL) _exit(2);
    char *id = NULL;
    if (utp_start_workflow(engine, SHELL_CHAIN, NULL, NULL, &id) != NULL) _exit(4);
    char line[96];
    snprintf(line, sizeof line, "%s\n", id);
    size_t len = strlen(line);
    if (write(out_fd, line, len) != (ssize_t)len) _exit(5);
    close(out_fd);
    for (;;) sleep_ms(1000);
}

/* A run over a C tool, killed mid-run: a new engine resumes it once the tool is registered. */
static void test_crash_and_recover(struct child *child) {
    int crashed = crash_child(child, calls_path, "s2");
    const char *id = child->id;
    char seen[256];
    CHECK(strcmp(calls(seen, sizeof seen), "s0 s1 s2 ") == 0, "calls before recovery: %s", seen);
    if (!crashed) return;

    utp_engine_t *engine = open_db("engine after the crash");
    if (engine == NULL) return;
    /* Its tool is not registered yet: the run is left in the store as it was. */
    char *record = NULL, *ids = NULL, *events = NULL;
    if (ok(utp_execution(engine, id, &record), "execution after the crash")) {
        char status_text[32];
        CHECK(strcmp(json_str(record, "status", status_text, sizeof status_text), "running") == 0, "%s", record);
        CHECK(count_of(record, "\"status\":\"succeeded\"") == 2, "two steps committed: %s", record);
        utp_string_free(record);
    }
    if (ok(utp_executions(engine, "running", NULL, &record), "running executions")) {
        CHECK(find(record, id) >= 0, "%s", record);
        utp_string_free(record);
    }
    if (ok(utp_recover(engine, &ids), "recover without the tool")) {
        CHECK(strcmp(ids, "[]") == 0, "%s", ids);
        utp_string_free(ids);
    }

    ok(utp_register_tool(engine, "t.step", STEP_SPEC, step_tool, NULL, NULL, NULL), "register t.step");
    if (ok(utp_recover(engine, &ids), "recover")) {
        char expected[96];
        snprintf(expected, sizeof expected, "[\"%s\"]", id);
        CHECK(strcmp(ids, expected) == 0, "recovered %s, expected %s", ids, expected);
        utp_string_free(ids);
    }
    if (ok(utp_recover(engine, &ids), "recover again")) {
        CHECK(strcmp(ids, "[]") == 0, "already running here: %s", ids);
        utp_string_free(ids);
    }
    if (ok(utp_wait_execution(engine, id, 60000, &record), "wait for the resumed run")) {
        char status_text[32];
        CHECK(strcmp(json_str(record, "status", status_text, sizeof status_text), "completed") == 0, "%s", record);
        CHECK(find(record, "\"last\":3") >= 0, "outputs: %s", record);
        CHECK(find(record, "\"session_id\":\"crash\"") >= 0, "%s", record);
        utp_string_free(record);
    }
    char filter[160];
    snprintf(filter, sizeof filter, "{\"execution_id\": \"%s\"}", id);
    if (ok(utp_stored_events(engine, filter, &events), "stored events of the resumed run")) {
        CHECK(count_of(events, "\"type\":\"workflow.started\"") == 1, "%s", events);
        CHECK(count_of(events, "\"type\":\"workflow.completed\"") == 1, "%s", events);
        CHECK(count_of(events, "\"type\":\"step.completed\"") == 4, "%s", events);
        utp_string_free(events);
    }
    utp_engine_free(engine);
    /* s0 and s1 were committed before the kill: never called again; s2 ran again. */
    CHECK(strcmp(calls(seen, sizeof seen), "s0 s1 s2 s2 s3 ") == 0, "calls after recovery: %s", seen);

    engine = open_db("engine after recovery");
    if (engine == NULL) return;
    if (ok(utp_execution(engine, id, &record), "execution after recovery")) {
        char status_text[32];
        CHECK(strcmp(json_str(record, "status", status_text, sizeof status_text), "completed") == 0, "%s", record);
        utp_string_free(record);
    }
    if (ok(utp_recover(engine, &ids), "nothing left to recover")) {
        CHECK(strcmp(ids, "[]") == 0, "%s", ids);
        utp_string_free(ids);
    }
    utp_engine_free(engine);
}

/* A run whose tools the config names is resumed by utp_engine_new() itself, on the
 * engine's own threads: it finishes with no further call. */
static void test_open_resumes(struct child *child) {
    char path[160], text[256];
    snprintf(path, sizeof path, "%s/shell_calls.txt", dir);
    int crashed = crash_child(child, path, "s1");
    char config[2048];
    shell_config(config, sizeof config, "shell");
    utp_engine_t *engine = NULL;
    if (crashed && ok(utp_engine_new(config, &engine), "engine resuming the shell run")) {
        char *out = NULL;
        if (ok(utp_recover(engine, &out), "recover after open")) {
            CHECK(strcmp(out, "[]") == 0, "already resumed by utp_engine_new: %s", out);
            utp_string_free(out);
        }
        if (ok(utp_execution(engine, child->id, &out), "resumed execution")) {
            char status_text[32];
            json_str(out, "status", status_text, sizeof status_text);
            /* "created" until its task first runs on the engine's threads */
            CHECK(strcmp(status_text, "running") == 0 || strcmp(status_text, "created") == 0, "%s", out);
            utp_string_free(out);
        }
        open_gate("shell");
        if (ok(utp_wait_execution(engine, child->id, 60000, &out), "wait for the shell run")) {
            char status_text[32];
            CHECK(strcmp(json_str(out, "status", status_text, sizeof status_text), "completed") == 0, "%s", out);
            utp_string_free(out);
        }
        utp_engine_free(engine);
    }
    open_gate("shell"); /* in every case: the killed child's orphaned shell waits for it */
    /* Step a was committed before the kill: not run again; b ran twice (killed, resumed). */
    CHECK(strcmp(shell_calls("shell", text, sizeof text), "s0\ns1\ns1\ns2\n") == 0, "shell calls: %s", text);
}

/* utp_engine_free() in the middle of a run: the file is free at once and the next
 * engine on it resumes the run where it stopped. */
static void test_free_mid_run(void) {
    char config[2048], text[256];
    shell_config(config, sizeof config, "free");
    utp_engine_t *engine = NULL;
    if (!ok(utp_engine_new(config, &engine), "engine for free mid-run")) return;
    char *id = NULL;
    if (!ok(utp_start_workflow(engine, SHELL_CHAIN, NULL, NULL, &id), "start the shell run")) {
        utp_engine_free(engine);
        return;
    }
    int started = 0;
    for (int waited = 0; waited < 60000 && !started; waited += 10) {
        started = strstr(shell_calls("free", text, sizeof text), "s1") != NULL;
        if (!started) sleep_ms(10);
    }
    CHECK(started, "step b never started");
    utp_engine_free(engine);

    engine = NULL;
    if (ok(utp_engine_new(config, &engine), "engine on the freed file")) {
        char *out = NULL;
        if (ok(utp_recover(engine, &out), "recover after free")) {
            CHECK(strcmp(out, "[]") == 0, "already resumed by utp_engine_new: %s", out);
            utp_string_free(out);
        }
        open_gate("free");
        if (ok(utp_wait_execution(engine, id, 60000, &out), "wait for the resumed run")) {
            char status_text[32];
            CHECK(strcmp(json_str(out, "status", status_text, sizeof status_text), "completed") == 0, "%s", out);
            utp_string_free(out);
        }
        utp_engine_free(engine);
    }
    open_gate("free");
    utp_string_free(id);
    CHECK(strcmp(shell_calls("free", text, sizeof text), "s0\ns1\ns1\ns2\n") == 0, "calls: %s", text);
}

/* A run committed by one engine, read back (and pruned) by the next. */
static void test_reopen(void) {
    char store[256];
    snprintf(store, sizeof store, "{\"url\": \"sqlite:%s/reopen.db\", \"durability\": \"sync\", \"retention\": \"30d\"}",
             dir);
    utp_engine_t *engine = open_engine(store, "engine with a store mapping");
    if (engine == NULL) return;
    ok(utp_register_tool(engine, "t.step", STEP_SPEC, step_tool, NULL, NULL, NULL), "register t.step");
    char *record = NULL, *text = NULL;
    char id[64] = {0};
    if (ok(utp_run_workflow(engine, CHAIN, NULL, "{\"session\": \"s1\"}", &record), "run")) {
        json_str(record, "execution_id", id, sizeof id);
        CHECK(find(record, "\"last\":3") >= 0, "%s", record);
        utp_string_free(record);
    }
    ok(utp_set_session_state(engine, "acme", "s1", "cart", "[\"a\", \"b\"]"), "set session state");
    utp_engine_free(engine);

    engine = open_engine(store, "engine reopened");
    if (engine == NULL) return;
    /* No tool registered here: the record comes from the store. */
    if (ok(utp_execution(engine, id, &record), "execution from the store")) {
        char status_text[32];
        CHECK(strcmp(json_str(record, "status", status_text, sizeof status_text), "completed") == 0, "%s", record);
        CHECK(find(record, "\"last\":3") >= 0, "%s", record);
        CHECK(count_of(record, "\"status\":\"succeeded\"") == 4, "%s", record);
        utp_string_free(record);
    }
    if (ok(utp_executions(engine, NULL, NULL, &text), "executions from the store")) {
        CHECK(find(text, id) >= 0 && count_of(text, "\"execution_id\"") == 1, "%s", text);
        utp_string_free(text);
    }
    if (ok(utp_executions(engine, "completed", "s1", &text), "executions by status and session")) {
        CHECK(find(text, id) >= 0, "%s", text);
        utp_string_free(text);
    }
    if (ok(utp_session_state(engine, "acme", "s1", &text), "session state from the store")) {
        CHECK(strcmp(text, "{\"cart\":[\"a\",\"b\"]}") == 0, "%s", text);
        utp_string_free(text);
    }

    char filter[200];
    snprintf(filter, sizeof filter, "{\"execution_id\": \"%s\"}", id);
    if (ok(utp_stored_events(engine, filter, &text), "stored events")) {
        CHECK(count_of(text, "\"type\":\"workflow.started\"") == 1, "%s", text);
        CHECK(count_of(text, "\"type\":\"workflow.completed\"") == 1, "%s", text);
        CHECK(count_of(text, "\"type\":\"step.completed\"") == 4, "%s", text);
        CHECK(find(text, "\"type\":\"workflow.started\"") < find(text, "\"type\":\"workflow.completed\""), "order");
        CHECK(count_of(text, "\"seq\":") == count_of(text, "\"type\":"), "every event has its seq");
        utp_string_free(text);
    }
    snprintf(filter, sizeof filter, "{\"execution_id\": \"%s\", \"type\": \"step.*\", \"limit\": 2}", id);
    if (ok(utp_stored_events(engine, filter, &text), "stored events by type, limited")) {
        CHECK(count_of(text, "\"type\":\"step.") == 2 && count_of(text, "\"type\":") == 2, "%s", text);
        utp_string_free(text);
    }
    if (ok(utp_stored_events(engine, "{\"after\": 1, \"limit\": 1}", &text), "stored events after seq 1")) {
        CHECK(json_num(text, "seq") == 2, "%s", text);
        utp_string_free(text);
    }
    if (ok(utp_stored_events(engine, "{\"since\": \"2100-01-01T00:00:00Z\"}", &text), "stored events since")) {
        CHECK(strcmp(text, "[]") == 0, "%s", text);
        utp_string_free(text);
    }
    if (ok(utp_stored_events(engine, NULL, &text), "stored events, no filter")) {
        CHECK(count_of(text, "\"type\":\"workflow.completed\"") == 1, "%s", text);
        utp_string_free(text);
    }

    /* A second engine on the same file while this one is open. */
    utp_engine_t *second = (utp_engine_t *)&second; /* not NULL: the call must reset it */
    char config[320];
    snprintf(config, sizeof config, "{\"store\": %s}", store);
    utp_error_t *err = utp_engine_new(config, &second);
    CHECK(err != NULL && utp_error_code(err) == UTP_ERR_STORE, "second engine: %s", utp_error_message(err));
    CHECK(err != NULL && find(utp_error_message(err), "reopen.db") >= 0, "the message names the file: %s",
          utp_error_message(err));
    CHECK(second == NULL, "out_engine reset on error");
    utp_error_free(err);

    uint64_t deleted = 99;
    ok(utp_prune(engine, 3600000, &deleted), "prune an hour");
    CHECK(deleted == 0, "deleted %llu", (unsigned long long)deleted);
    sleep_ms(50);
    ok(utp_prune(engine, 10, &deleted), "prune 10 ms");
    CHECK(deleted > 0, "deleted %llu", (unsigned long long)deleted);
    expect_code(utp_execution(engine, id, &record), UTP_ERR_NOT_FOUND, "a pruned execution");
    CHECK(record == NULL, "out reset");
    if (ok(utp_stored_events(engine, filter, &text), "events of a pruned execution")) {
        CHECK(strcmp(text, "[]") == 0, "%s", text);
        utp_string_free(text);
    }
    utp_engine_free(engine);

    /* Freed: the file is free again. */
    engine = open_engine(store, "engine after free");
    utp_engine_free(engine);
}

static void test_store_errors(void) {
    char path[160];
    snprintf(path, sizeof path, "%s/corrupt.db", dir);
    FILE *f = fopen(path, "w");
    CHECK(f != NULL, "cannot write %s", path);
    if (f != NULL) {
        for (int i = 0; i < 200; i++) fputs("this is not a SQLite database, just text\n", f);
        fclose(f);
    }
    char config[256];
    snprintf(config, sizeof config, "{\"store\": \"sqlite:%s\"}", path);
    utp_engine_t *engine = NULL;
    expect_code(utp_engine_new(config, &engine), UTP_ERR_STORE, "a file that is not a database");
    CHECK(engine == NULL, "out_engine reset");
    expect_code(utp_engine_new("{\"store\": \"postgres://x\"}", &engine), UTP_ERR_INVALID_ARGUMENT, "unknown store");
    expect_code(utp_engine_new("{\"store\": \"sqlite:\"}", &engine), UTP_ERR_INVALID_ARGUMENT, "no path");
    snprintf(config, sizeof config, "{\"store\": {\"url\": \"sqlite:%s/x.db\", \"durability\": \"fast\"}}", dir);
    expect_code(utp_engine_new(config, &engine), UTP_ERR_INVALID_ARGUMENT, "bad durability");
    snprintf(config, sizeof config, "{\"store\": {\"url\": \"sqlite:%s/x.db\", \"colour\": 1}}", dir);
    expect_code(utp_engine_new(config, &engine), UTP_ERR_INVALID_ARGUMENT, "unknown store key");
    CHECK(engine == NULL, "out_engine reset");
}

/* Without a store: recover resumes nothing, prune deletes nothing, stored events are the history. */
static void test_memory(void) {
    utp_engine_t *engine = NULL;
    if (!ok(utp_engine_new("{}", &engine), "memory engine")) return;
    ok(utp_register_tool(engine, "t.step", STEP_SPEC, step_tool, NULL, NULL, NULL), "register t.step");
    char *record = NULL, *text = NULL;
    char id[64] = {0};
    if (ok(utp_run_workflow(engine, CHAIN, NULL, NULL, &record), "run in memory")) {
        json_str(record, "execution_id", id, sizeof id);
        utp_string_free(record);
    }
    char filter[160];
    snprintf(filter, sizeof filter, "{\"execution_id\": \"%s\", \"type\": \"workflow.*\"}", id);
    if (ok(utp_stored_events(engine, filter, &text), "memory stored events")) {
        CHECK(count_of(text, "\"type\":\"workflow.started\"") == 1, "%s", text);
        CHECK(count_of(text, "\"type\":\"workflow.completed\"") == 1, "%s", text);
        CHECK(count_of(text, "\"type\":\"step.") == 0, "%s", text);
        utp_string_free(text);
    }
    if (ok(utp_recover(engine, &text), "memory recover")) {
        CHECK(strcmp(text, "[]") == 0, "%s", text);
        utp_string_free(text);
    }
    uint64_t deleted = 99;
    ok(utp_prune(engine, 0, &deleted), "memory prune");
    CHECK(deleted == 0, "deleted %llu", (unsigned long long)deleted);
    utp_engine_free(engine);
}

static void test_misuse(void) {
    utp_engine_t *engine = NULL;
    if (!ok(utp_engine_new(NULL, &engine), "engine")) return;
    char *out = (char *)"untouched";
    uint64_t deleted = 7;
    expect_code(utp_recover(NULL, &out), UTP_ERR_INVALID_ARGUMENT, "recover NULL engine");
    CHECK(out == NULL, "out reset");
    expect_code(utp_recover(engine, NULL), UTP_ERR_INVALID_ARGUMENT, "recover NULL out");
    expect_code(utp_stored_events(NULL, NULL, &out), UTP_ERR_INVALID_ARGUMENT, "stored events NULL engine");
    expect_code(utp_stored_events(engine, NULL, NULL), UTP_ERR_INVALID_ARGUMENT, "stored events NULL out");
    expect_code(utp_stored_events(engine, "{not json", &out), UTP_ERR_INVALID_ARGUMENT, "bad filter JSON");
    expect_code(utp_stored_events(engine, "[1]", &out), UTP_ERR_INVALID_ARGUMENT, "filter not an object");
    expect_code(utp_stored_events(engine, "{\"executionId\": \"x\"}", &out), UTP_ERR_INVALID_ARGUMENT, "unknown key");
    expect_code(utp_stored_events(engine, "{\"type\": \"workflow.finished\"}", &out), UTP_ERR_INVALID_ARGUMENT,
                "type matching nothing");
    expect_code(utp_stored_events(engine, "{\"after\": -1}", &out), UTP_ERR_INVALID_ARGUMENT, "negative after");
    expect_code(utp_stored_events(engine, "{\"limit\": \"3\"}", &out), UTP_ERR_INVALID_ARGUMENT, "limit a string");
    expect_code(utp_stored_events(engine, "{\"execution_id\": 5}", &out), UTP_ERR_INVALID_ARGUMENT, "id a number");
    expect_code(utp_stored_events(engine, "{\"type\": \"\xff\"}", &out), UTP_ERR_INVALID_ARGUMENT, "invalid UTF-8");
    CHECK(out == NULL, "out reset");
    if (ok(utp_stored_events(engine, "null", &out), "null filter")) utp_string_free(out);
    if (ok(utp_stored_events(engine, "  ", &out), "blank filter")) utp_string_free(out);
    expect_code(utp_prune(NULL, 0, &deleted), UTP_ERR_INVALID_ARGUMENT, "prune NULL engine");
    CHECK(deleted == 0, "out reset");
    expect_code(utp_prune(engine, 0, NULL), UTP_ERR_INVALID_ARGUMENT, "prune NULL out");
    utp_engine_free(engine);
}

int main(int argc, char **argv) {
    (void)argc;
    (void)argv;
    snprintf(dir, sizeof dir, "/tmp/utp-c-store-XXXXXX");
    if (mkdtemp(dir) == NULL) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(db, sizeof db, "%s/utp.db", dir);
    snprintf(calls_path, sizeof calls_path, "%s/calls.txt", dir);

    /* Both children are forked first, while this process has no library threads. */
    struct child tool_crash, shell_crash;
    start_child(&tool_crash, tool_child);
    start_child(&shell_crash, shell_child);
    test_crash_and_recover(&tool_crash);
    test_open_resumes(&shell_crash);
    test_free_mid_run();
    remove(calls_path);
    test_reopen();
    test_store_errors();
    test_memory();
    test_misuse();

    char cleanup[128];
    snprintf(cleanup, sizeof cleanup, "rm -rf '%s'", dir);
    if (system(cleanup) != 0) fprintf(stderr, "could not remove %s\n", dir);

    printf("test_store: %d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
