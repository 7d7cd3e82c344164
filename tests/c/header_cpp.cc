// utp.h must compile as C++ (extern "C" guards, no C-only constructs).
#include "utp.h"

static_assert(UTP_ERR_PANIC == 19, "error codes are stable");

int main() {
    utp_engine_t *engine = nullptr;
    utp_error_t *err = utp_engine_new("{}", &engine);
    utp_error_free(err);
    utp_engine_free(engine);
    return utp_version() != nullptr ? 0 : 1;
}
