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
    expect("version is 0.1.0", strcmp(workhost_version(), "0.1.0") == 0 ? 0 : 1, WORKHOST_OK, NULL);
    expect("an unknown code has a message",
           strcmp(workhost_error_message(12345), "unknown error code") == 0 ? 0 : 1, WORKHOST_OK, NULL);
    workhost_string_free(NULL);
    workhost_string_free((char *)&stack_int); /* not ours: ignored */
    expect("free(NULL)", workhost_free(NULL), WORKHOST_OK, NULL);

    /* Opening. */
    expect("open_path: manifest_path NULL", workhost_open_path(NULL, &host, &error), WORKHOST_ERR_NULL, error);
    expect("open_path: out NULL", workhost_open_path(manifest, NULL, &error), WORKHOST_ERR_NULL, error);
    expect("open_path: path not UTF-8", workhost_open_path(bad_utf8, &host, &error), WORKHOST_ERR_UTF8, error);
    expect("open_path: no such file", workhost_open_path("/nonexistent/workhost.toml", &host, &error),
           WORKHOST_ERR_CONFIG, error);
    expect("open_path: error_out NULL", workhost_open_path("/nonexistent/workhost.toml", &host, NULL),
           WORKHOST_ERR_CONFIG, NULL);
    expect("open_path: failed open leaves out NULL", host == NULL ? 0 : 1, WORKHOST_OK, NULL);
    expect("open_toml: toml NULL", workhost_open_toml(NULL, dir, &host, &error), WORKHOST_ERR_NULL, error);
    expect("open_toml: base_dir NULL", workhost_open_toml("", NULL, &host, &error), WORKHOST_ERR_NULL, error);
    expect("open_toml: out NULL", workhost_open_toml("", dir, NULL, &error), WORKHOST_ERR_NULL, error);
    expect("open_toml: toml not UTF-8", workhost_open_toml(bad_utf8, dir, &host, &error), WORKHOST_ERR_UTF8, error);
    expect("open_toml: base_dir not UTF-8", workhost_open_toml("", bad_utf8, &host, &error), WORKHOST_ERR_UTF8,
           error);
    expect_says("open_toml: malformed TOML", workhost_open_toml("data_dir = [[[", dir, &host, &error),
                WORKHOST_ERR_CONFIG, error, "workhost.toml");
    expect_says("open_toml: unknown key", workhost_open_toml("colour = \"red\"", dir, &host, &error),
                WORKHOST_ERR_CONFIG, error, "colour");

    /* A host from TOML text, freed without a shutdown. */
    expect("open_toml: a manifest with no handlers",
           workhost_open_toml("data_dir = \"inline-data\"\n", dir, &host, &error), WORKHOST_OK, error);
    expect_says("open_toml: enqueue for a handler it lacks", workhost_enqueue(host, JOB, &id, &error),
                WORKHOST_ERR_NOT_FOUND, error, "echo");
    expect("free without shutdown", workhost_free(host), WORKHOST_OK, NULL);
    host = NULL;

    expect("open_path", workhost_open_path(manifest, &host, &error), WORKHOST_OK, error);
    expect_says("open_path: the data directory is taken", workhost_open_path(manifest, &foreign, &error),
                WORKHOST_ERR_STORE, error, "already");
    foreign = (workhost_host *)&stack_int;

    /* Enqueue. */
    expect("enqueue: host NULL", workhost_enqueue(NULL, JOB, &id, &error), WORKHOST_ERR_NULL, error);
    expect("enqueue: request NULL", workhost_enqueue(host, NULL, &id, &error), WORKHOST_ERR_NULL, error);
    expect("enqueue: id_out NULL", workhost_enqueue(host, JOB, NULL, &error), WORKHOST_ERR_NULL, error);
    expect("enqueue: request not UTF-8", workhost_enqueue(host, bad_utf8, &id, &error), WORKHOST_ERR_UTF8, error);
    expect("enqueue: malformed JSON", workhost_enqueue(host, "{\"handler\": ", &id, &error), WORKHOST_ERR_INVALID,
           error);
    expect("enqueue: not an object", workhost_enqueue(host, "[1, 2]", &id, &error), WORKHOST_ERR_INVALID, error);
    expect_says("enqueue: unknown field",
                workhost_enqueue(host, "{\"handler\": \"echo\", \"task\": \"t\", \"prioriy\": 1}", &id, &error),
                WORKHOST_ERR_INVALID, error, "\"prioriy\"");
    expect_says("enqueue: wrong type",
                workhost_enqueue(host, "{\"handler\": \"echo\", \"task\": \"t\", \"priority\": \"high\"}", &id,
                                 &error),
                WORKHOST_ERR_INVALID, error, "field \"priority\": expected an integer 0-9");
    expect_says("enqueue: over a limit",
                workhost_enqueue(host, "{\"handler\": \"echo\", \"task\": \"t\", \"timeout\": \"3d\"}", &id, &error),
                WORKHOST_ERR_INVALID, error, "timeout");
    expect_says("enqueue: unknown handler", workhost_enqueue(host, "{\"handler\": \"nope\", \"task\": \"t\"}", &id,
                                                             &error),
                WORKHOST_ERR_NOT_FOUND, error, "nope");
    expect("enqueue: after a task that does not exist",
           workhost_enqueue(host, "{\"handler\": \"echo\", \"task\": \"t\", \"after\": [99999]}", &id, &error),
           WORKHOST_ERR_NOT_FOUND, error);
    expect("enqueue: error_out NULL", workhost_enqueue(host, "[", &id, NULL), WORKHOST_ERR_INVALID, NULL);
    expect("enqueue", workhost_enqueue(host, "{\"handler\": \"echo\", \"task\": \"t\", \"delay\": \"1h\"}", &id,
                                       &error),
           WORKHOST_OK, error);
    expect("enqueue: id set", id > 0 ? 0 : 1, WORKHOST_OK, NULL);

    /* Get and list. */
    expect("get: host NULL", workhost_get(NULL, id, &json, &error), WORKHOST_ERR_NULL, error);
    expect("get: json_out NULL", workhost_get(host, id, NULL, &error), WORKHOST_ERR_NULL, error);
    expect("get: no such task", workhost_get(host, 99999, &json, &error), WORKHOST_ERR_NOT_FOUND, error);
    expect("get: failed get leaves json_out NULL", json == NULL ? 0 : 1, WORKHOST_OK, NULL);
    expect("get", workhost_get(host, id, &json, &error), WORKHOST_OK, error);
    workhost_string_free(json);
    workhost_string_free(json); /* a second free of the same string: ignored */
    json = NULL;
    expect("list: json_out NULL", workhost_list(host, NULL, NULL, &error), WORKHOST_ERR_NULL, error);
    expect("list: filter not UTF-8", workhost_list(host, bad_utf8, &json, &error), WORKHOST_ERR_UTF8, error);
    expect("list: malformed filter", workhost_list(host, "{", &json, &error), WORKHOST_ERR_INVALID, error);
    expect_says("list: unknown state", workhost_list(host, "{\"state\": \"sleeping\"}", &json, &error),
                WORKHOST_ERR_INVALID, error, "sleeping");
    expect_says("list: unknown field", workhost_list(host, "{\"colour\": \"red\"}", &json, &error),
                WORKHOST_ERR_INVALID, error, "colour");
    expect("list: NULL filter", workhost_list(host, NULL, &json, &error), WORKHOST_OK, error);
    workhost_string_free(json);
    json = NULL;

    /* Cancel, pause, resume. */
    expect("cancel: host NULL", workhost_cancel(NULL, id, &error), WORKHOST_ERR_NULL, error);
    expect("cancel: no such task", workhost_cancel(host, 99999, &error), WORKHOST_ERR_NOT_FOUND, error);
    expect("cancel", workhost_cancel(host, id, &error), WORKHOST_OK, error);
    expect("cancel: again, already ended", workhost_cancel(host, id, &error), WORKHOST_OK, error);
    expect("pause: host NULL", workhost_pause(NULL, &error), WORKHOST_ERR_NULL, error);
    expect("resume: host NULL", workhost_resume(NULL, &error), WORKHOST_ERR_NULL, error);

    /* Run once. */
    char *outcome = NULL;
    expect("run_once: host NULL", workhost_run_once(NULL, "echo", "t", NULL, &outcome, &error), WORKHOST_ERR_NULL,
           error);
    expect("run_once: handler NULL", workhost_run_once(host, NULL, "t", NULL, &outcome, &error), WORKHOST_ERR_NULL,
           error);
    expect("run_once: task NULL", workhost_run_once(host, "echo", NULL, NULL, &outcome, &error), WORKHOST_ERR_NULL,
           error);
    expect("run_once: outcome_json_out NULL", workhost_run_once(host, "echo", "t", NULL, NULL, &error),
           WORKHOST_ERR_NULL, error);
    expect("run_once: handler not UTF-8", workhost_run_once(host, bad_utf8, "t", NULL, &outcome, &error),
           WORKHOST_ERR_UTF8, error);
    expect("run_once: input not UTF-8", workhost_run_once(host, "echo", "t", bad_utf8, &outcome, &error),
           WORKHOST_ERR_UTF8, error);
    expect("run_once: malformed input", workhost_run_once(host, "echo", "t", "{\"a\": ", &outcome, &error),
           WORKHOST_ERR_INVALID, error);
    expect("run_once: input not an object", workhost_run_once(host, "echo", "t", "[1]", &outcome, &error),
           WORKHOST_ERR_INVALID, error);
    expect("run_once: empty task name", workhost_run_once(host, "echo", "", NULL, &outcome, &error),
           WORKHOST_ERR_INVALID, error);
    expect_says("run_once: unknown handler", workhost_run_once(host, "nope", "t", NULL, &outcome, &error),
                WORKHOST_ERR_NOT_FOUND, error, "nope");

    /* Callback. */
    expect("set_callback: host NULL", workhost_set_callback(NULL, on_change, NULL, &error), WORKHOST_ERR_NULL, error);
    expect("set_callback", workhost_set_callback(host, on_change, NULL, &error), WORKHOST_OK, error);
    expect("set_callback: remove", workhost_set_callback(host, NULL, NULL, &error), WORKHOST_OK, error);

    /* Foreign and forged handles are refused, never read. */
    expect("enqueue: foreign handle", workhost_enqueue(foreign, JOB, &id, &error), WORKHOST_ERR_BAD_HANDLE, error);
    expect("get: foreign handle", workhost_get(foreign, 1, &json, &error), WORKHOST_ERR_BAD_HANDLE, error);
    expect("list: foreign handle", workhost_list(foreign, NULL, &json, &error), WORKHOST_ERR_BAD_HANDLE, error);
    expect("cancel: foreign handle", workhost_cancel(foreign, 1, &error), WORKHOST_ERR_BAD_HANDLE, error);
    expect("pause: foreign handle", workhost_pause(foreign, &error), WORKHOST_ERR_BAD_HANDLE, error);
    expect("resume: foreign handle", workhost_resume(foreign, &error), WORKHOST_ERR_BAD_HANDLE, error);
    expect("run_once: foreign handle", workhost_run_once(foreign, "echo", "t", NULL, &outcome, &error),
           WORKHOST_ERR_BAD_HANDLE, error);
    expect("set_callback: foreign handle", workhost_set_callback(foreign, on_change, NULL, &error),
           WORKHOST_ERR_BAD_HANDLE, error);
    expect("shutdown: foreign handle", workhost_shutdown(foreign, &error), WORKHOST_ERR_BAD_HANDLE, error);
    expect("free: foreign handle", workhost_free(foreign), WORKHOST_ERR_BAD_HANDLE, NULL);
    expect("enqueue: small integer as handle", workhost_enqueue(small, JOB, &id, &error), WORKHOST_ERR_BAD_HANDLE,
           error);
    expect("free: small integer as handle", workhost_free(small), WORKHOST_ERR_BAD_HANDLE, NULL);

    /* After shutdown, every call but free says so. */
    expect("shutdown: host NULL", workhost_shutdown(NULL, &error), WORKHOST_ERR_NULL, error);
    expect("shutdown", workhost_shutdown(host, &error), WORKHOST_OK, error);
    expect("shutdown: again", workhost_shutdown(host, &error), WORKHOST_ERR_SHUTDOWN, error);
    expect("enqueue: after shutdown", workhost_enqueue(host, JOB, &id, &error), WORKHOST_ERR_SHUTDOWN, error);
    expect("get: after shutdown", workhost_get(host, 1, &json, &error), WORKHOST_ERR_SHUTDOWN, error);
    expect("list: after shutdown", workhost_list(host, NULL, &json, &error), WORKHOST_ERR_SHUTDOWN, error);
    expect("cancel: after shutdown", workhost_cancel(host, 1, &error), WORKHOST_ERR_SHUTDOWN, error);
    expect("pause: after shutdown", workhost_pause(host, &error), WORKHOST_ERR_SHUTDOWN, error);
    expect("resume: after shutdown", workhost_resume(host, &error), WORKHOST_ERR_SHUTDOWN, error);
    expect("run_once: after shutdown", workhost_run_once(host, "echo", "t", NULL, &outcome, &error),
           WORKHOST_ERR_SHUTDOWN, error);
    expect("set_callback: after shutdown", workhost_set_callback(host, on_change, NULL, &error),
           WORKHOST_ERR_SHUTDOWN, error);
    expect("free", workhost_free(host), WORKHOST_OK, NULL);

    /* A freed handle is refused, and a second free detected. */
    expect("enqueue: freed handle", workhost_enqueue(host, JOB, &id, &error), WORKHOST_ERR_BAD_HANDLE, error);
    expect("get: freed handle", workhost_get(host, 1, &json, &error), WORKHOST_ERR_BAD_HANDLE, error);
    expect("shutdown: freed handle", workhost_shutdown(host, &error), WORKHOST_ERR_BAD_HANDLE, error);
    expect("free: freed handle", workhost_free(host), WORKHOST_ERR_BAD_HANDLE, NULL);

    /* The data directory is free again once the host is. */
    expect("open_path: again after free", workhost_open_path(manifest, &host, &error), WORKHOST_OK, error);
    expect("free: the second host", workhost_free(host), WORKHOST_OK, NULL);

    printf("%d of %d cases passed\n", cases - failures, cases);
    return failures == 0 ? 0 : 1;
}
