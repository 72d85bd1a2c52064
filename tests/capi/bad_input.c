/*
 * The bad-input table: every kind of bad argument the C ABI can meet (NULL
 * pointers, invalid UTF-8, malformed JSON, unknown names, a freed handle, a
 * foreign pointer, calls after shutdown), each with the code the header
 * documents. Run under valgrind by tests/all/capi.rs, which fails on any
 * invalid access or definite leak.
 * Usage: bad_input <manifest> <empty directory>. Exits 0 when every case
 * passes, 1 otherwise.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "workhost.h"

static int failures = 0;
static int cases = 0;

/* One case: the call returned `got`, the table says `want`. A failing
 * call must leave a message in `error` (and a succeeding one NULL). */
static void expect(const char *name, int got, int want, char *error) {
    cases++;
    int message_ok = (got == WORKHOST_OK) == (error == NULL);
    if (got != want || !message_ok) {
        failures++;
        printf("FAIL %s: got %d (%s), want %d (%s); message: %s\n", name, got, workhost_error_message(got), want,
               workhost_error_message(want), error ? error : "(none)");
    } else {
        printf("ok   %s: %d %s\n", name, got, error ? error : "");
    }
    workhost_string_free(error);
}

/* A call without `error_out`, or a check of a value: only the code. */
static void expect_code(const char *name, int got, int want) {
    cases++;
    if (got != want) {
        failures++;
        printf("FAIL %s: got %d (%s), want %d (%s)\n", name, got, workhost_error_message(got), want,
               workhost_error_message(want));
    } else {
        printf("ok   %s: %d\n", name, got);
    }
}

/* Like expect, and the message must mention `part`. */
static void expect_says(const char *name, int got, int want, char *error, const char *part) {
    if (error && !strstr(error, part)) {
        failures++;
        printf("FAIL %s: the message does not say \"%s\": %s\n", name, part, error);
    }
    expect(name, got, want, error);
}

static void on_change(void *user_data, int64_t id, const char *state, const char *event) {
    (void)user_data;
    (void)id;
    (void)state;
    (void)event;
}

/* A call that reports through `error` (C leaves the order in which
 * arguments are evaluated open, so the call runs before `error` is read). */
#define CASE(name, call, want)                                                                                        \
    do {                                                                                                              \
        int rc_ = (call);                                                                                             \
        expect(name, rc_, want, error);                                                                               \
        error = NULL;                                                                                                 \
    } while (0)
#define CASE_SAYS(name, call, want, part)                                                                             \
    do {                                                                                                              \
        int rc_ = (call);                                                                                             \
        expect_says(name, rc_, want, error, part);                                                                    \
        error = NULL;                                                                                                 \
    } while (0)

#define JOB "{\"handler\": \"echo\", \"task\": \"t\"}"

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: bad_input <manifest> <empty directory>\n");
        return 2;
    }
    const char *manifest = argv[1];
    const char *dir = argv[2];
    const char bad_utf8[] = {'e', 'c', (char)0xff, (char)0xfe, 0};
    char *error = NULL;
    char *json = NULL;
    int64_t id = 0;
    workhost_host *host = NULL;
    int stack_int = 7;
    workhost_host *foreign = (workhost_host *)&stack_int;
    workhost_host *small = (workhost_host *)(uintptr_t)1;

    /* Static strings and frees that need no host. */
    expect_code("version is 0.1.0", strcmp(workhost_version(), "0.1.0") == 0 ? 0 : 1, WORKHOST_OK);
    expect_code("an unknown code has a message",
                strcmp(workhost_error_message(12345), "unknown error code") == 0 ? 0 : 1, WORKHOST_OK);
    workhost_string_free(NULL);
    workhost_string_free((char *)&stack_int); /* not ours: ignored */
    expect_code("free(NULL)", workhost_free(NULL), WORKHOST_OK);

    /* Opening. */
    CASE("open_path: manifest_path NULL", workhost_open_path(NULL, &host, &error), WORKHOST_ERR_NULL);
    CASE("open_path: out NULL", workhost_open_path(manifest, NULL, &error), WORKHOST_ERR_NULL);
    CASE("open_path: path not UTF-8", workhost_open_path(bad_utf8, &host, &error), WORKHOST_ERR_UTF8);
    CASE("open_path: no such file",
         workhost_open_path("/nonexistent/workhost.toml", &host, &error), WORKHOST_ERR_CONFIG);
    expect_code("open_path: error_out NULL", workhost_open_path("/nonexistent/workhost.toml", &host, NULL),
                WORKHOST_ERR_CONFIG);
    expect_code("open_path: failed open leaves out NULL", host == NULL ? 0 : 1, WORKHOST_OK);
    CASE("open_toml: toml NULL", workhost_open_toml(NULL, dir, &host, &error), WORKHOST_ERR_NULL);
    CASE("open_toml: base_dir NULL", workhost_open_toml("", NULL, &host, &error), WORKHOST_ERR_NULL);
    CASE("open_toml: out NULL", workhost_open_toml("", dir, NULL, &error), WORKHOST_ERR_NULL);
    CASE("open_toml: toml not UTF-8", workhost_open_toml(bad_utf8, dir, &host, &error), WORKHOST_ERR_UTF8);
    CASE("open_toml: base_dir not UTF-8", workhost_open_toml("", bad_utf8, &host, &error), WORKHOST_ERR_UTF8);
    CASE_SAYS("open_toml: malformed TOML",
              workhost_open_toml("data_dir = [[[", dir, &host, &error), WORKHOST_ERR_CONFIG, "workhost.toml");
    CASE_SAYS("open_toml: unknown key",
              workhost_open_toml("colour = \"red\"", dir, &host, &error), WORKHOST_ERR_CONFIG, "colour");

    /* A host from TOML text, freed without a shutdown. */
    CASE("open_toml: a manifest with no handlers",
         workhost_open_toml("data_dir = \"inline-data\"\n", dir, &host, &error), WORKHOST_OK);
    CASE_SAYS("open_toml: enqueue for a handler it lacks",
              workhost_enqueue(host, JOB, &id, &error), WORKHOST_ERR_NOT_FOUND, "echo");
    expect_code("free without shutdown", workhost_free(host), WORKHOST_OK);
    host = NULL;

    CASE("open_path", workhost_open_path(manifest, &host, &error), WORKHOST_OK);
    CASE_SAYS("open_path: the data directory is taken",
              workhost_open_path(manifest, &foreign, &error), WORKHOST_ERR_STORE, "already");
    foreign = (workhost_host *)&stack_int;

    /* Enqueue. */
    CASE("enqueue: host NULL", workhost_enqueue(NULL, JOB, &id, &error), WORKHOST_ERR_NULL);
    CASE("enqueue: request NULL", workhost_enqueue(host, NULL, &id, &error), WORKHOST_ERR_NULL);
    CASE("enqueue: id_out NULL", workhost_enqueue(host, JOB, NULL, &error), WORKHOST_ERR_NULL);
    CASE("enqueue: request not UTF-8", workhost_enqueue(host, bad_utf8, &id, &error), WORKHOST_ERR_UTF8);
    CASE("enqueue: malformed JSON", workhost_enqueue(host, "{\"handler\": ", &id, &error), WORKHOST_ERR_INVALID);
    CASE("enqueue: not an object", workhost_enqueue(host, "[1, 2]", &id, &error), WORKHOST_ERR_INVALID);
    CASE_SAYS("enqueue: unknown field",
              workhost_enqueue(host, "{\"handler\": \"echo\", \"task\": \"t\", \"prioriy\": 1}", &id, &error),
              WORKHOST_ERR_INVALID, "\"prioriy\"");
    CASE_SAYS("enqueue: wrong type",
              workhost_enqueue(host, "{\"handler\": \"echo\", \"task\": \"t\", \"priority\": \"high\"}", &id,
                                 &error), WORKHOST_ERR_INVALID, "field \"priority\": expected an integer 0-9");
    CASE_SAYS("enqueue: over a limit",
              workhost_enqueue(host, "{\"handler\": \"echo\", \"task\": \"t\", \"timeout\": \"3d\"}", &id, &error),
              WORKHOST_ERR_INVALID, "timeout");
    CASE_SAYS("enqueue: unknown handler", workhost_enqueue(host, "{\"handler\": \"nope\", \"task\": \"t\"}", &id,
                                                             &error), WORKHOST_ERR_NOT_FOUND, "nope");
    CASE("enqueue: after a task that does not exist",
         workhost_enqueue(host, "{\"handler\": \"echo\", \"task\": \"t\", \"after\": [99999]}", &id, &error),
         WORKHOST_ERR_NOT_FOUND);
    expect_code("enqueue: error_out NULL", workhost_enqueue(host, "[", &id, NULL), WORKHOST_ERR_INVALID);
    CASE("enqueue", workhost_enqueue(host, "{\"handler\": \"echo\", \"task\": \"t\", \"delay\": \"1h\"}", &id,
                                       &error), WORKHOST_OK);
    expect_code("enqueue: id set", id > 0 ? 0 : 1, WORKHOST_OK);

    /* Get and list. */
    CASE("get: host NULL", workhost_get(NULL, id, &json, &error), WORKHOST_ERR_NULL);
    CASE("get: json_out NULL", workhost_get(host, id, NULL, &error), WORKHOST_ERR_NULL);
    CASE("get: no such task", workhost_get(host, 99999, &json, &error), WORKHOST_ERR_NOT_FOUND);
    expect_code("get: failed get leaves json_out NULL", json == NULL ? 0 : 1, WORKHOST_OK);
    CASE("get", workhost_get(host, id, &json, &error), WORKHOST_OK);
    workhost_string_free(json);
    workhost_string_free(json); /* a second free of the same string: ignored */
    json = NULL;
    CASE("list: json_out NULL", workhost_list(host, NULL, NULL, &error), WORKHOST_ERR_NULL);
    CASE("list: filter not UTF-8", workhost_list(host, bad_utf8, &json, &error), WORKHOST_ERR_UTF8);
    CASE("list: malformed filter", workhost_list(host, "{", &json, &error), WORKHOST_ERR_INVALID);
    CASE_SAYS("list: unknown state",
              workhost_list(host, "{\"state\": \"sleeping\"}", &json, &error), WORKHOST_ERR_INVALID, "sleeping");
    CASE_SAYS("list: unknown field",
              workhost_list(host, "{\"colour\": \"red\"}", &json, &error), WORKHOST_ERR_INVALID, "colour");
    CASE("list: NULL filter", workhost_list(host, NULL, &json, &error), WORKHOST_OK);
    workhost_string_free(json);
    json = NULL;

    /* Cancel, pause, resume. */
    CASE("cancel: host NULL", workhost_cancel(NULL, id, &error), WORKHOST_ERR_NULL);
    CASE("cancel: no such task", workhost_cancel(host, 99999, &error), WORKHOST_ERR_NOT_FOUND);
    CASE("cancel", workhost_cancel(host, id, &error), WORKHOST_OK);
    CASE("cancel: again, already ended", workhost_cancel(host, id, &error), WORKHOST_OK);
    CASE("pause: host NULL", workhost_pause(NULL, &error), WORKHOST_ERR_NULL);
    CASE("resume: host NULL", workhost_resume(NULL, &error), WORKHOST_ERR_NULL);

    /* Run once. */
    char *outcome = NULL;
    CASE("run_once: host NULL", workhost_run_once(NULL, "echo", "t", NULL, &outcome, &error), WORKHOST_ERR_NULL);
    CASE("run_once: handler NULL", workhost_run_once(host, NULL, "t", NULL, &outcome, &error), WORKHOST_ERR_NULL);
    CASE("run_once: task NULL", workhost_run_once(host, "echo", NULL, NULL, &outcome, &error), WORKHOST_ERR_NULL);
    CASE("run_once: outcome_json_out NULL",
         workhost_run_once(host, "echo", "t", NULL, NULL, &error), WORKHOST_ERR_NULL);
    CASE("run_once: handler not UTF-8",
         workhost_run_once(host, bad_utf8, "t", NULL, &outcome, &error), WORKHOST_ERR_UTF8);
    CASE("run_once: input not UTF-8",
         workhost_run_once(host, "echo", "t", bad_utf8, &outcome, &error), WORKHOST_ERR_UTF8);
    CASE("run_once: malformed input",
         workhost_run_once(host, "echo", "t", "{\"a\": ", &outcome, &error), WORKHOST_ERR_INVALID);
    CASE("run_once: input not an object",
         workhost_run_once(host, "echo", "t", "[1]", &outcome, &error), WORKHOST_ERR_INVALID);
    CASE("run_once: empty task name",
         workhost_run_once(host, "echo", "", NULL, &outcome, &error), WORKHOST_ERR_INVALID);
    CASE_SAYS("run_once: unknown handler",
              workhost_run_once(host, "nope", "t", NULL, &outcome, &error), WORKHOST_ERR_NOT_FOUND, "nope");

    /* Callback. */
    CASE("set_callback: host NULL", workhost_set_callback(NULL, on_change, NULL, &error), WORKHOST_ERR_NULL);
    CASE("set_callback", workhost_set_callback(host, on_change, NULL, &error), WORKHOST_OK);
    CASE("set_callback: remove", workhost_set_callback(host, NULL, NULL, &error), WORKHOST_OK);

    /* Foreign and forged handles are refused, never read. */
    CASE("enqueue: foreign handle", workhost_enqueue(foreign, JOB, &id, &error), WORKHOST_ERR_BAD_HANDLE);
    CASE("get: foreign handle", workhost_get(foreign, 1, &json, &error), WORKHOST_ERR_BAD_HANDLE);
    CASE("list: foreign handle", workhost_list(foreign, NULL, &json, &error), WORKHOST_ERR_BAD_HANDLE);
    CASE("cancel: foreign handle", workhost_cancel(foreign, 1, &error), WORKHOST_ERR_BAD_HANDLE);
    CASE("pause: foreign handle", workhost_pause(foreign, &error), WORKHOST_ERR_BAD_HANDLE);
    CASE("resume: foreign handle", workhost_resume(foreign, &error), WORKHOST_ERR_BAD_HANDLE);
    CASE("run_once: foreign handle",
         workhost_run_once(foreign, "echo", "t", NULL, &outcome, &error), WORKHOST_ERR_BAD_HANDLE);
    CASE("set_callback: foreign handle",
         workhost_set_callback(foreign, on_change, NULL, &error), WORKHOST_ERR_BAD_HANDLE);
    CASE("shutdown: foreign handle", workhost_shutdown(foreign, &error), WORKHOST_ERR_BAD_HANDLE);
    expect_code("free: foreign handle", workhost_free(foreign), WORKHOST_ERR_BAD_HANDLE);
    CASE("enqueue: small integer as handle", workhost_enqueue(small, JOB, &id, &error), WORKHOST_ERR_BAD_HANDLE);
    expect_code("free: small integer as handle", workhost_free(small), WORKHOST_ERR_BAD_HANDLE);

    /* After shutdown, every call but free says so. */
    CASE("shutdown: host NULL", workhost_shutdown(NULL, &error), WORKHOST_ERR_NULL);
    CASE("shutdown", workhost_shutdown(host, &error), WORKHOST_OK);
    CASE("shutdown: again", workhost_shutdown(host, &error), WORKHOST_ERR_SHUTDOWN);
    CASE("enqueue: after shutdown", workhost_enqueue(host, JOB, &id, &error), WORKHOST_ERR_SHUTDOWN);
    CASE("get: after shutdown", workhost_get(host, 1, &json, &error), WORKHOST_ERR_SHUTDOWN);
    CASE("list: after shutdown", workhost_list(host, NULL, &json, &error), WORKHOST_ERR_SHUTDOWN);
    CASE("cancel: after shutdown", workhost_cancel(host, 1, &error), WORKHOST_ERR_SHUTDOWN);
    CASE("pause: after shutdown", workhost_pause(host, &error), WORKHOST_ERR_SHUTDOWN);
    CASE("resume: after shutdown", workhost_resume(host, &error), WORKHOST_ERR_SHUTDOWN);
    CASE("run_once: after shutdown",
         workhost_run_once(host, "echo", "t", NULL, &outcome, &error), WORKHOST_ERR_SHUTDOWN);
    CASE("set_callback: after shutdown", workhost_set_callback(host, on_change, NULL, &error), WORKHOST_ERR_SHUTDOWN);
    expect_code("free", workhost_free(host), WORKHOST_OK);

    /* A freed handle is refused, and a second free detected. */
    CASE("enqueue: freed handle", workhost_enqueue(host, JOB, &id, &error), WORKHOST_ERR_BAD_HANDLE);
    CASE("get: freed handle", workhost_get(host, 1, &json, &error), WORKHOST_ERR_BAD_HANDLE);
    CASE("shutdown: freed handle", workhost_shutdown(host, &error), WORKHOST_ERR_BAD_HANDLE);
    expect_code("free: freed handle", workhost_free(host), WORKHOST_ERR_BAD_HANDLE);

    /* The data directory is free again once the host is. */
    CASE("open_path: again after free", workhost_open_path(manifest, &host, &error), WORKHOST_OK);
    expect_code("free: the second host", workhost_free(host), WORKHOST_OK);

    printf("%d of %d cases passed\n", cases - failures, cases);
    return failures == 0 ? 0 : 1;
}
