/* Test helpers shared by the C tests: counters, CHECK, ok(), expect_code(), find(). */
#ifndef UTP_TEST_CHECK_H
#define UTP_TEST_CHECK_H

#include <stdio.h>
#include <string.h>

#include "utp.h"

static int passed = 0;
static int failed = 0;

#define CHECK(cond, ...)                                                  \
    do {                                                                  \
        if (cond) {                                                       \
            passed++;                                                     \
        } else {                                                          \
            failed++;                                                     \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                 \
            fputc('\n', stderr);                                          \
        }                                                                 \
    } while (0)

/* Check that `err` is NULL (success); print and free it otherwise. */
static int ok(utp_error_t *err, const char *what) {
    if (err == NULL) {
        passed++;
        return 1;
    }
    failed++;
    fprintf(stderr, "FAIL %s: error %d: %s\n", what, (int)utp_error_code(err), utp_error_message(err));
    utp_error_free(err);
    return 0;
}

/* Check that `err` carries `code` and a non-empty message; always frees it. */
static void expect_code(utp_error_t *err, int32_t code, const char *what) {
    if (err == NULL) {
        failed++;
        fprintf(stderr, "FAIL %s: expected error %d, got success\n", what, (int)code);
        return;
    }
    if (utp_error_code(err) == code && utp_error_message(err) != NULL && utp_error_message(err)[0] != '\0') {
        passed++;
    } else {
        failed++;
        fprintf(stderr, "FAIL %s: expected error %d, got %d: %s\n", what, (int)code, (int)utp_error_code(err),
                utp_error_message(err));
    }
    utp_error_free(err);
}

/* Position of `needle` in `hay`, or -1. */
static long find(const char *hay, const char *needle) {
    const char *p = (hay != NULL) ? strstr(hay, needle) : NULL;
    return p ? (long)(p - hay) : -1;
}

#endif
