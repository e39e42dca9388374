/* test: the one harness for CPU (CI) and GPU (device) tests.
 *
 * A test is a function registered at load time with TEST(name) in any tests/test_*.c file; the
 * runner (tests/test_main.c) runs every registered test, or those whose name contains one of
 * the command-line arguments (an argument starting with - excludes instead), and ends with the line "N passed, N failed"; its exit status is
 * non-zero when anything failed. CHECK records a failure and lets the test continue; REQUIRE
 * records it and returns from the test. A test passes when it recorded no failure.
 */
#ifndef GPSDREC_TEST_H
#define GPSDREC_TEST_H

#include <math.h>
#include <stdio.h>

typedef void (*test_fn)(void);
void test_register(const char *name, const char *file, test_fn fn);
void test_failure(const char *file, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* A failed CHECK/REQUIRE: the condition's text is printed as is (it may contain '%'). */
void test_check_failed(const char *file, int line, const char *kind, const char *cond, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* Directory holding ../shared (golden vectors, datasets), from GPSDREC_SHARED or "../shared". */
const char *test_shared_dir(void);
/* A fresh temporary directory for this test run (removed at exit unless GPSDREC_KEEP_TMP). */
const char *test_tmp_dir(void);
/* Path of the gpsdrec binary under test (GPSDREC_BIN or ./gpsdrec). */
const char *test_binary(void);
/* Whether path names an existing file or directory. */
int test_file_exists(const char *path);
/* Run a shell command, capture stdout+stderr into a malloc'd string; returns the exit status. */
int test_run_capture(const char *cmd, char **output);

#define TEST(name)                                                        \
    static void test_##name(void);                                        \
    __attribute__((constructor)) static void test_register_##name(void)   \
    {                                                                     \
        test_register(#name, __FILE__, test_##name);                      \
    }                                                                     \
    static void test_##name(void)

#define CHECK(cond, ...)                                                  \
    do {                                                                  \
        if (!(cond))                                                      \
            test_check_failed(__FILE__, __LINE__, "CHECK", #cond, "" __VA_ARGS__); \
    } while (0)

#define REQUIRE(cond, ...)                                                \
    do {                                                                  \
        if (!(cond)) {                                                    \
            test_check_failed(__FILE__, __LINE__, "REQUIRE", #cond, "" __VA_ARGS__); \
            return;                                                       \
        }                                                                 \
    } while (0)

/* |a - b| <= tol, with a message that shows both values. */
#define CHECK_NEAR(a, b, tol)                                             \
    do {                                                                  \
        double _a = (double)(a), _b = (double)(b), _t = (double)(tol);    \
        if (!(fabs(_a - _b) <= _t))                                       \
            test_failure(__FILE__, __LINE__, "CHECK_NEAR(%s, %s): %.9g vs %.9g (diff %.3g > %.3g)", #a, #b, _a, _b, fabs(_a - _b), _t); \
    } while (0)

#endif
