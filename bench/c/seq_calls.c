/*
 * Sequential http tool calls from C through utp_call_tool, against bench/calls' loopback
 * server (`call_http serve`): registers BASE/utcp as manual "bench", warms up with 200
 * calls, then times N calls of bench.echo with {"x": "v<i>"}. Prints one JSON line.
 *
 * Build and run (docs/benchmarks.md, "Tool calls"):
 *   cargo build --release -p utp-ffi
 *   gcc -O2 -Iinclude bench/c/seq_calls.c -o /tmp/seq_calls -Ltarget/release -lutp \
 *       -Wl,-rpath,$PWD/target/release -pthread
 *   taskset -c 0 /tmp/seq_calls http://127.0.0.1:PORT 20000
 */
#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "utp.h"

static int fail(utp_error_t *err) {
    fprintf(stderr, "error %d: %s\n", (int)utp_error_code(err), utp_error_message(err));
    utp_error_free(err);
    return 1;
}

static utp_error_t *call(utp_engine_t *engine, int i) {
    char args[64];
    snprintf(args, sizeof args, "{\"x\": \"v%d\"}", i);
    char *out = NULL;
    utp_error_t *err = utp_call_tool(engine, "bench.echo", args, NULL, &out);
    utp_string_free(out);
    return err;
}

int main(int argc, char **argv) {
    if (argc != 3 || atoi(argv[2]) <= 0) {
        fprintf(stderr, "usage: seq_calls BASE_URL N\n");
        return 2;
    }
    int n = atoi(argv[2]);
    utp_engine_t *engine = NULL;
    utp_error_t *err = utp_engine_new(NULL, &engine);
    if (err != NULL) return fail(err);
    char url[512];
    snprintf(url, sizeof url, "%s/utcp", argv[1]);
    char *names = NULL;
    err = utp_register_manual(engine, url, "bench", &names);
    if (err != NULL) return fail(err);
    utp_string_free(names);
    for (int i = 0; i < 200; i++) {
        if ((err = call(engine, i)) != NULL) return fail(err);
    }
    struct timespec start, end;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (int i = 0; i < n; i++) {
        if ((err = call(engine, i)) != NULL) return fail(err);
    }
    clock_gettime(CLOCK_MONOTONIC, &end);
    double seconds = (double)(end.tv_sec - start.tv_sec) + (double)(end.tv_nsec - start.tv_nsec) / 1e9;
    printf("{\"mode\": \"utp-c\", \"seq_n\": %d, \"seq_calls_per_s\": %.0f}\n", n, n / seconds);
    utp_engine_free(engine);
    return 0;
}
