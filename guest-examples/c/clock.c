/* clock: this run's real wall-clock time, two readings of the monotonic
 * clock, and fresh randomness, through the C standard library (time,
 * clock_gettime, gmtime_r, strftime, snprintf, getentropy). */
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#include "workhost.h"

static double ms(const struct timespec *t) { return (double)t->tv_sec * 1e3 + (double)t->tv_nsec / 1e6; }

static bool run(wh_string_t *name, wh_data_t *input, wh_outcome_t *ret, wh_string_t *err) {
  struct timespec wall, first, second;
  if (clock_gettime(CLOCK_REALTIME, &wall) != 0) return wh_fail(err, "no wall clock");
  int64_t wall_ms = (int64_t)wall.tv_sec * 1000 + wall.tv_nsec / 1000000;
  time_t secs = time(NULL);
  struct tm tm;
  char utc[32];
  if (!gmtime_r(&secs, &tm) || !strftime(utc, sizeof utc, "%Y-%m-%dT%H:%M:%SZ", &tm))
    return wh_fail(err, "formatting the time failed");

  /* Two readings of the monotonic clock, the second once it has moved. */
  if (clock_gettime(CLOCK_MONOTONIC, &first) != 0) return wh_fail(err, "no monotonic clock");
  do {
    clock_gettime(CLOCK_MONOTONIC, &second);
  } while (second.tv_sec == first.tv_sec && second.tv_nsec == first.tv_nsec);

  unsigned char bytes[16];
  uint64_t word;
  if (getentropy(bytes, sizeof bytes) != 0 || getentropy(&word, sizeof word) != 0)
    return wh_fail(err, "no randomness");

  wh_output_t out = {0};
  wh_put_s64(&out, "wall_ms", wall_ms);
  wh_put_string(&out, "utc", utc);
  double mono[2] = {ms(&first), ms(&second)};
  wh_put_f64_list(&out, "mono_ms", mono, 2);
  /* 53 random bits as a float in [0, 1). */
  wh_put_f64(&out, "random", (double)(word >> 11) / 9007199254740992.0);
  int64_t values[16];
  for (int i = 0; i < 16; i++) values[i] = bytes[i];
  wh_put_s64_list(&out, "bytes", values, 16);
  char summary[96];
  snprintf(summary, sizeof summary, "clock: %s, %lld ms, random byte %u", utc, (long long)wall_ms, bytes[0]);
  wh_log(WH_INFO, "%s", summary);
  return wh_success(ret, &out);
}
WORKHOST_HANDLER(run)
