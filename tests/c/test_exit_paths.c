/*
 * Every way a C process can end with engines it never freed. The driver (no
 * arguments but MANUALS_DIR) runs this program again as children, one scenario each
 * (`--child NAME`), UTP_EXIT_RUNS times (20 by default) in parallel batches of
 * UTP_EXIT_BATCH (5) (UTP_EXIT_ONLY=NAME: that scenario alone), and checks each child's exit status (or signal) and that its
 * stderr holds no crash text. Before that it frees an engine from another thread in
 * its own process, so that valgrind checks that path too.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"

/* ------------------------------------------------------------------ helpers */

static void sleep_ms(long ms) {
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&t, &t) == -1 && errno == EINTR) {
    }
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* Child-side failure: message on stderr, exit status 99. */
static void die(const char *what, utp_error_t *err) {
    fprintf(stderr, "FAIL %s: %s\n", what, err ? utp_error_message(err) : "");
    if (err) utp_error_free(err);
    exit(99);
}

static void must(utp_error_t *err, const char *what) {
    if (err) die(what, err);
}

static int32_t noop_tool(void *user_data, const char *args_json, utp_tool_result_t *result) {
    (void)user_data;
    (void)args_json;
    utp_tool_result_set_json(result, "1");
    return 0;
}

static int32_t slow_tool(void *user_data, const char *args_json, utp_tool_result_t *result) {
    (void)user_data;
    (void)args_json;
    printf("ready\n");
    fflush(stdout);
    sleep_ms(2000);
    utp_tool_result_set_json(result, "1");
    return 0;
}

static int32_t exiting_tool(void *user_data, const char *args_json, utp_tool_result_t *result) {
    (void)user_data;
    (void)args_json;
    (void)result;
    exit(4);
}

static void allow_rule(void *user_data, const char *tool, const char *action, const char *params_json,
                       utp_rule_result_t *result) {
    (void)user_data;
    (void)tool;
    (void)action;
    (void)params_json;
    (void)result;
}

static void exiting_rule(void *user_data, const char *tool, const char *action, const char *params_json,
                         utp_rule_result_t *result) {
    (void)user_data;
    (void)action;
    (void)params_json;
    (void)result;
    if (strcmp(tool, "x") == 0) exit(6);
}

/* Subscribers sleep `*(long *)user_data` ms per event. */
static void slow_subscriber(void *user_data, const char *event_json) {
    (void)event_json;
    sleep_ms(*(long *)user_data);
}

static void exiting_subscriber(void *user_data, const char *event_json) {
    (void)user_data;
    (void)event_json;
    exit(5);
}

static int finalised = 0;
static pthread_mutex_t finalised_lock = PTHREAD_MUTEX_INITIALIZER;

static void count_free(void *user_data) {
    (void)user_data;
    pthread_mutex_lock(&finalised_lock);
    finalised++;
    pthread_mutex_unlock(&finalised_lock);
}

static long one_ms = 1;

/* An engine with a C tool (t.noop), a C rule and `subscribers` subscribers sleeping
 * `*delay_ms` per event; every registration counts its finaliser. */
static utp_engine_t *busy_engine(const char *config, int subscribers, long *delay_ms) {
    utp_engine_t *engine = NULL;
    must(utp_engine_new(config, &engine), "utp_engine_new");
    must(utp_register_tool(engine, "t.noop", NULL, noop_tool, NULL, count_free, NULL), "register t.noop");
    must(utp_add_business_rule(engine, "allow-all", allow_rule, NULL, count_free), "add rule");
    for (int i = 0; i < subscribers; i++) {
        uint64_t id = 0;
        must(utp_subscribe(engine, "*", slow_subscriber, delay_ms, count_free, &id), "subscribe");
    }
    return engine;
}

static void call(utp_engine_t *engine, const char *tool) {
    char *out = NULL;
    must(utp_call_tool(engine, tool, "{}", NULL, &out), tool);
    utp_string_free(out);
}

static void calls(utp_engine_t *engine, int n) {
    for (int i = 0; i < n; i++) call(engine, "t.noop");
}

struct caller {
    utp_engine_t *engine;
    int n;
};

static void *call_loop(void *arg) {
    struct caller *c = arg;
    calls(c->engine, c->n);
    return NULL;
}

static void *free_engine(void *engine) {
    utp_engine_free(engine);
    return NULL;
}

/* The smallest `"queued":N` in the metrics. */
static long min_queued(utp_engine_t *engine) {
    char *metrics = NULL;
    must(utp_metrics(engine, &metrics), "utp_metrics");
    long least = -1;
    for (const char *p = strstr(metrics, "\"queued\":"); p != NULL; p = strstr(p + 1, "\"queued\":")) {
        long n = strtol(p + strlen("\"queued\":"), NULL, 10);
        if (least < 0 || n < least) least = n;
    }
    utp_string_free(metrics);
    return least;
}

/* ------------------------------------------------------------------ scenarios (children) */

static int child(const char *name) {
    alarm(60); /* a hang ends as SIGALRM, which the driver reports */
    if (strcmp(name, "exit-without-free") == 0) {
        utp_engine_t *engine = busy_engine(NULL, 2, &one_ms);
        calls(engine, 3000);
        exit(0);
    }
    if (strcmp(name, "return-from-main-without-free") == 0) {
        utp_engine_t *engine = busy_engine(NULL, 2, &one_ms);
        calls(engine, 1000);
        return 0;
    }
    if (strcmp(name, "exit-while-another-thread-calls") == 0) {
        utp_engine_t *engine = busy_engine(NULL, 2, &one_ms);
        struct caller c = {engine, 1000000};
        pthread_t thread;
        pthread_create(&thread, NULL, call_loop, &c);
        sleep_ms(100);
        exit(0);
    }
    if (strcmp(name, "exit-in-tool") == 0) {
        utp_engine_t *engine = busy_engine(NULL, 2, &one_ms);
        must(utp_register_tool(engine, "t.exit", NULL, exiting_tool, NULL, NULL, NULL), "register t.exit");
        calls(engine, 200);
        call(engine, "t.exit");
        return 98;
    }
    if (strcmp(name, "exit-in-rule") == 0) {
        utp_engine_t *engine = busy_engine(NULL, 2, &one_ms);
        must(utp_register_tool(engine, "x.y", NULL, noop_tool, NULL, NULL, NULL), "register x.y");
        must(utp_add_business_rule(engine, "exits", exiting_rule, NULL, NULL), "add exiting rule");
        calls(engine, 200);
        char *out = NULL;
        utp_error_free(utp_call_tool(engine, "x.y", "{}", NULL, &out));
        return 98;
    }
    if (strcmp(name, "exit-in-subscriber") == 0) {
        utp_engine_t *engine = busy_engine(NULL, 2, &one_ms);
        uint64_t id = 0;
        must(utp_subscribe(engine, "tool.succeeded", exiting_subscriber, NULL, NULL, &id), "subscribe");
        calls(engine, 200);
        sleep_ms(5000);
        return 98;
    }
    if (strcmp(name, "sigint-during-call") == 0) {
        utp_engine_t *engine = busy_engine(NULL, 2, &one_ms);
        must(utp_register_tool(engine, "t.slow", NULL, slow_tool, NULL, NULL, NULL), "register t.slow");
        calls(engine, 100);
        call(engine, "t.slow");
        return 98;
    }
    if (strcmp(name, "sigint-during-workflow") == 0) {
        utp_engine_t *engine = busy_engine(NULL, 2, &one_ms);
        must(utp_register_tool(engine, "t.slow", NULL, slow_tool, NULL, NULL, NULL), "register t.slow");
        char *record = NULL;
        must(utp_run_workflow(engine,
                              "{\"name\":\"slow\",\"steps\":[{\"id\":\"a\",\"tool\":\"t.noop\"},"
                              "{\"id\":\"b\",\"tool\":\"t.slow\",\"depends_on\":[\"a\"]},"
                              "{\"id\":\"c\",\"tool\":\"t.noop\",\"depends_on\":[\"b\"]}]}",
                              NULL, NULL, &record),
             "utp_run_workflow");
        return 98;
    }
    if (strcmp(name, "exit-with-1000-events-queued") == 0) {
        /* Each subscriber sits on its first event while the rest pile up: long enough that
           1,000 calls finish first on a loaded machine (2 s was not, once); exit() does not wait. */
        static long sixty_s = 60000;
        utp_engine_t *engine = busy_engine("{\"events\":{\"queue_capacity\":5000}}", 3, &sixty_s);
        calls(engine, 1000);
        long queued = min_queued(engine);
        if (queued < 1000) {
            fprintf(stderr, "FAIL only %ld events queued\n", queued);
            return 99;
        }
        printf("queued %ld\n", queued);
        exit(0);
    }
    if (strcmp(name, "free-from-another-thread") == 0) {
        utp_engine_t *engine = busy_engine(NULL, 2, &one_ms);
        calls(engine, 1000);
        pthread_t thread;
        pthread_create(&thread, NULL, free_engine, engine);
        pthread_join(thread, NULL);
        if (finalised != 4) {
            fprintf(stderr, "FAIL %d finalisers ran, expected 4\n", finalised);
            return 99;
        }
        return 0;
    }
    if (strcmp(name, "fork-in-the-middle") == 0) {
        utp_engine_t *engine = busy_engine(NULL, 2, &one_ms);
        struct caller c = {engine, 2000};
        pthread_t thread;
        pthread_create(&thread, NULL, call_loop, &c);
        sleep_ms(20);
        pid_t pid = fork();
        if (pid == 0) {
            /* The parent's engine: a clear error, and freeing it neither hangs nor crashes. */
            char *out = NULL;
            utp_error_t *err = utp_call_tool(engine, "t.noop", "{}", NULL, &out);
            if (err == NULL || utp_error_code(err) != UTP_ERR_INVALID_ARGUMENT ||
                strstr(utp_error_message(err), "fork") == NULL) {
                fprintf(stderr, "FAIL the parent's engine in the child: %s\n", err ? utp_error_message(err) : "ok");
                _exit(99);
            }
            utp_error_free(err);
            utp_engine_free(engine);
            /* A new engine works. */
            utp_engine_t *mine = busy_engine(NULL, 1, &one_ms);
            calls(mine, 100);
            exit(7);
        }
        int status = 0;
        waitpid(pid, &status, 0);
        pthread_join(thread, NULL);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 7) {
            fprintf(stderr, "FAIL the child ended with status %d\n", status);
            return 99;
        }
        calls(engine, 100);
        return 0;
    }
    fprintf(stderr, "FAIL unknown scenario %s\n", name);
    return 99;
}

/* ------------------------------------------------------------------ driver */

struct scenario {
    const char *name;
    int status;     /* expected exit status, or -1 */
    int signal;     /* expected terminating signal, or 0 */
    int interrupt;  /* send SIGINT once the child prints "ready" */
    double within;  /* seconds */
};

static const struct scenario SCENARIOS[] = {
    {"exit-without-free", 0, 0, 0, 30},
    {"return-from-main-without-free", 0, 0, 0, 30},
    {"exit-while-another-thread-calls", 0, 0, 0, 30},
    {"exit-in-tool", 4, 0, 0, 30},
    {"exit-in-rule", 6, 0, 0, 30},
    {"exit-in-subscriber", 5, 0, 0, 30},
    {"sigint-during-call", -1, SIGINT, 1, 30},
    {"sigint-during-workflow", -1, SIGINT, 1, 30},
    {"exit-with-1000-events-queued", 0, 0, 0, 15},
    {"free-from-another-thread", 0, 0, 0, 30},
    {"fork-in-the-middle", 0, 0, 0, 30},
};

static const char *CRASH_TEXT[] = {"panicked", "Fatal", "Aborted", "not initialized", "Segmentation fault",
                                   "core dumped", "FAIL"};

struct run {
    pid_t pid;
    int out; /* read end of the child's stdout */
    FILE *err; /* the child's stderr */
    double started;
};

static const char *self_path;

static struct run start(const struct scenario *s) {
    struct run r = {0, -1, tmpfile(), now_s()};
    int fds[2];
    if (r.err == NULL || pipe(fds) != 0) {
        perror("test_exit_paths: pipe/tmpfile");
        exit(2);
    }
    fflush(stdout);
    fflush(stderr);
    r.pid = fork();
    if (r.pid == 0) {
        dup2(fds[1], STDOUT_FILENO);
        dup2(fileno(r.err), STDERR_FILENO);
        close(fds[0]);
        close(fds[1]);
        execl(self_path, self_path, "--child", s->name, (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    r.out = fds[0];
    if (s->interrupt) {
        /* Wait for "ready" (the slow tool started), then Ctrl-C. */
        char buf[64];
        size_t got = 0;
        while (got < sizeof buf - 1) {
            ssize_t n = read(r.out, buf + got, sizeof buf - 1 - got);
            if (n <= 0) break;
            got += (size_t)n;
            buf[got] = '\0';
            if (strstr(buf, "ready\n")) break;
        }
        kill(r.pid, SIGINT);
    }
    return r;
}

static void finish(const struct scenario *s, struct run *r) {
    int status = 0;
    waitpid(r->pid, &status, 0);
    double seconds = now_s() - r->started;
    close(r->out);
    char err[8192];
    fflush(r->err);
    rewind(r->err);
    size_t n = fread(err, 1, sizeof err - 1, r->err);
    err[n] = '\0';
    fclose(r->err);
    if (s->signal) {
        CHECK(WIFSIGNALED(status) && WTERMSIG(status) == s->signal, "%s: expected signal %d, got status %d; stderr:\n%s",
              s->name, s->signal, status, err);
    } else {
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == s->status,
              "%s: expected exit status %d, got wait status %d; stderr:\n%s", s->name, s->status, status, err);
    }
    for (size_t i = 0; i < sizeof CRASH_TEXT / sizeof CRASH_TEXT[0]; i++) {
        CHECK(find(err, CRASH_TEXT[i]) < 0, "%s: '%s' on stderr:\n%s", s->name, CRASH_TEXT[i], err);
    }
    CHECK(seconds < s->within, "%s: took %.1f s", s->name, seconds);
}

static int env_int(const char *name, int fallback) {
    const char *v = getenv(name);
    return (v && atoi(v) > 0) ? atoi(v) : fallback;
}

int main(int argc, char **argv) {
    if (argc >= 3 && strcmp(argv[1], "--child") == 0) return child(argv[2]);
    self_path = argv[0];

    /* In this process (valgrind watches it): free from another thread while the
     * subscribers are busy; every finaliser has run once it returns. */
    utp_engine_t *engine = busy_engine(NULL, 2, &one_ms);
    for (int i = 0; i < 200; i++) {
        char *out = NULL;
        if (ok(utp_call_tool(engine, "t.noop", "{}", NULL, &out), "t.noop")) utp_string_free(out);
    }
    pthread_t thread;
    pthread_create(&thread, NULL, free_engine, engine);
    pthread_join(thread, NULL);
    CHECK(finalised == 4, "finalisers after a free from another thread: %d", finalised);
    char *out = NULL;
    expect_code(utp_call_tool(NULL, "t.noop", "{}", NULL, &out), UTP_ERR_INVALID_ARGUMENT, "a NULL engine");

    int runs = env_int("UTP_EXIT_RUNS", 20);
    int batch = env_int("UTP_EXIT_BATCH", 5);
    struct run *running = calloc((size_t)batch, sizeof *running);
    double all_started = now_s();
    for (size_t i = 0; i < sizeof SCENARIOS / sizeof SCENARIOS[0]; i++) {
        const struct scenario *s = &SCENARIOS[i];
        const char *only = getenv("UTP_EXIT_ONLY");
        if (only && strcmp(only, s->name) != 0) continue;
        double started = now_s();
        for (int done = 0; done < runs; done += batch) {
            int n = (runs - done < batch) ? runs - done : batch;
            for (int k = 0; k < n; k++) running[k] = start(s);
            for (int k = 0; k < n; k++) finish(s, &running[k]);
        }
        printf("exit path %-32s %d runs in %.1f s\n", s->name, runs, now_s() - started);
    }
    free(running);
    printf("test_exit_paths: %d passed, %d failed (%.1f s)\n", passed, failed, now_s() - all_started);
    return failed == 0 ? 0 : 1;
}
