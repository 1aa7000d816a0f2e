/*
 * reseed.node: a Node.js addon with one function, reseed(), which reseeds OpenSSL's random
 * generator from fresh kernel entropy.
 *
 * Node seeds OpenSSL's DRBG at start-up, before any function code runs, so every instance
 * restored from one checkpoint would otherwise continue the same DRBG state: equal
 * crypto.randomBytes, randomUUID, key pairs and TLS handshake secrets in all of them. OpenSSL
 * offers no JavaScript API to reseed, and its fork detection (a changed pid) does not fire after a
 * restore. RAND_add() reseeds the primary DRBG with entropy from its seed source (getrandom,
 * which the monitor serves fresh per instance) plus our bytes as additional input; the per-thread
 * DRBGs reseed from it on their next use because its reseed counter moved.
 *
 * The N-API declarations below are the stable C ABI of node_api.h (N-API version 1), written out
 * so the runtime builds with gcc alone, without Node's development headers. RAND_add and
 * RAND_status come from the OpenSSL that node links: its own static copy (exported for addons) or
 * the system's libcrypto.
 */
#include <stdbool.h>
#include <stddef.h>
#include <sys/random.h>

typedef struct napi_env__ *napi_env;
typedef struct napi_value__ *napi_value;
typedef struct napi_callback_info__ *napi_callback_info;
typedef int napi_status;
typedef napi_value (*napi_callback)(napi_env env, napi_callback_info info);

extern napi_status napi_create_function(napi_env env, const char *name, size_t length, napi_callback cb, void *data,
                                        napi_value *result);
extern napi_status napi_set_named_property(napi_env env, napi_value object, const char *name, napi_value value);
extern napi_status napi_get_boolean(napi_env env, bool value, napi_value *result);
extern napi_status napi_throw_error(napi_env env, const char *code, const char *message);

extern void RAND_add(const void *buffer, int count, double randomness);
extern int RAND_status(void);

static napi_value reseed(napi_env env, napi_callback_info info) {
    (void)info;
    unsigned char entropy[48];
    size_t filled = 0;
    while (filled < sizeof entropy) {
        ssize_t count = getrandom(entropy + filled, sizeof entropy - filled, 0);
        if (count <= 0) {
            napi_throw_error(env, "ERR_CATALYZER_RESEED", "getrandom failed: no fresh entropy to reseed OpenSSL with");
            return NULL;
        }
        filled += (size_t)count;
    }
    RAND_add(entropy, (int)sizeof entropy, (double)sizeof entropy);
    if (RAND_status() != 1) {
        napi_throw_error(env, "ERR_CATALYZER_RESEED", "OpenSSL's random generator is not seeded after RAND_add");
        return NULL;
    }
    napi_value result;
    napi_get_boolean(env, true, &result);
    return result;
}

napi_value napi_register_module_v1(napi_env env, napi_value exports) {
    napi_value function;
    if (napi_create_function(env, "reseed", 6, reseed, NULL, &function) != 0) return NULL;
    if (napi_set_named_property(env, exports, "reseed", function) != 0) return NULL;
    return exports;
}
