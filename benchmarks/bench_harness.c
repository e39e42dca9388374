/* bench_harness: buffers, timing and reporting for bench_kernels (contract in bench_harness.h). */
#include "bench_harness.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "rng.h"
#include "util.h"

bk_state BK;

#define POOL_LOG2 26 /* 64M values (256 MB of fp32): a period far beyond any L2 */
#define POOL_N ((int64_t)1 << POOL_LOG2)
#define STAGE_N ((int64_t)16 << 20)

static float *pool;
static int64_t pool_off;
static void *stage; /* pinned staging buffer for uploads */
static uint64_t id_stream;
static void **allocs;
static int n_allocs, cap_allocs;
/* the recent "ours" rows, so an alternative finds its reference whatever came in between */
#define N_OURS 64
static char ours_key[N_OURS][200];
static double ours_us_tab[N_OURS];
static int n_ours;

void bk_die(const char *what, const char *file, int line, const char *msg)
{
    fprintf(stderr, "bench_kernels: %s failed (%s:%d): %s\n", what, file, line, msg);
    fflush(stdout);
    exit(1);
}

void bk_init(FILE *json, int reps, const char *only)
{
    memset(&BK, 0, sizeof BK);
    BK.json = json;
    BK.reps = reps;
    BK.only = only;
    BK.t0 = gp_now();
    struct cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    BK.l2_bytes = (size_t)prop.l2CacheSize;
    BK.sm_count = prop.multiProcessorCount;
    CK(cudaStreamCreateWithFlags(&BK.s, cudaStreamNonBlocking));
    gp_err e = {{0}};
    BK.gemm = gemm_create((size_t)32 << 20, &e);
    if (!BK.gemm)
        bk_die("gemm_create", __FILE__, __LINE__, e.msg);
    BK.flush_bytes = (size_t)1 << 30;
    CK(cudaMalloc(&BK.flush, BK.flush_bytes));
    CK(cudaMallocHost(&stage, (size_t)STAGE_N * sizeof(float)));
    pool = gp_xmalloc((size_t)POOL_N * sizeof *pool);
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < POOL_N >> 16; c++) {
        gp_rng r = gp_rng_stream(7, RNG_PURPOSE_TEST, 0xB0B0, (uint64_t)c);
        for (int64_t i = c << 16; i < (c + 1) << 16; i++)
            pool[i] = (float)gp_rng_normal(&r);
    }
}

void bk_shutdown(void)
{
    bk_free_all();
    gemm_destroy(BK.gemm);
    CK(cudaFree(BK.flush));
    CK(cudaFreeHost(stage));
    CK(cudaStreamDestroy(BK.s));
    free(pool);
    free(allocs);
}

int bk_want(const char *g) { return !BK.only || strstr(g, BK.only) != NULL; }

void bk_progress(const char *text)
{
    printf("[%6.1f s] %s\n", gp_now() - BK.t0, text);
    fflush(stdout);
}

/* ---- buffers ---- */

void *bk_alloc(size_t bytes)
{
    void *p = NULL;
    CK(cudaMalloc(&p, bytes ? bytes : 16));
    /* on BK.s and waited for: BK.s does not order with the legacy stream that cudaMemcpy uses */
    CK(cudaMemsetAsync(p, 0xFF, bytes ? bytes : 16, BK.s));
    CK(cudaStreamSynchronize(BK.s));
    if (n_allocs == cap_allocs) {
        cap_allocs = cap_allocs ? 2 * cap_allocs : 256;
        allocs = gp_xrealloc(allocs, (size_t)cap_allocs * sizeof *allocs);
    }
    allocs[n_allocs++] = p;
    return p;
}

void bk_free_all(void)
{
    CK(cudaStreamSynchronize(BK.s));
    for (int i = 0; i < n_allocs; i++)
        CK(cudaFree(allocs[i]));
    n_allocs = 0;
}

static uint16_t to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

enum { FILL_NORMAL, FILL_POS, FILL_BF16 };

/* Fills n elements of dev from the pool at a fresh offset, through the pinned stage. */
static void fill(void *dev, int64_t n, int kind, float a, float b)
{
    const size_t esz = kind == FILL_BF16 ? 2 : 4;
    /* a new offset per buffer (an odd step, so sets of equal size never line up) */
    int64_t off = pool_off;
    pool_off = (pool_off + n + 1000003) & (POOL_N - 1);
    for (int64_t i0 = 0; i0 < n; i0 += STAGE_N) {
        int64_t m = GP_MIN(STAGE_N, n - i0);
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < m; i++) {
            float x = pool[(off + i0 + i) & (POOL_N - 1)];
            if (kind == FILL_NORMAL)
                ((float *)stage)[i] = x * a;
            else if (kind == FILL_POS)
                ((float *)stage)[i] = a + (b - a) * fminf(fabsf(x) * 0.25f, 0.999f);
            else
                ((uint16_t *)stage)[i] = to_bf16(x * a);
        }
        CK(cudaMemcpy((char *)dev + (size_t)i0 * esz, stage, (size_t)m * esz, cudaMemcpyHostToDevice));
    }
    CK(cudaDeviceSynchronize());
}

float *bk_rand_f32(int64_t n, float scale)
{
    float *p = bk_alloc((size_t)n * sizeof(float));
    fill(p, n, FILL_NORMAL, scale, 0);
    return p;
}

float *bk_rand_f32_pos(int64_t n, float lo, float hi)
{
    float *p = bk_alloc((size_t)n * sizeof(float));
    fill(p, n, FILL_POS, lo, hi);
    return p;
}

gp_bf16 *bk_rand_bf16(int64_t n, float scale)
{
    gp_bf16 *p = bk_alloc((size_t)n * sizeof(gp_bf16));
    fill(p, n, FILL_BF16, scale, 0);
    return p;
}

int32_t *bk_host_ids(int64_t n, int64_t lo, int64_t hi)
{
    int32_t *h = gp_xmalloc((size_t)(n ? n : 1) * sizeof *h);
    uint64_t stream = id_stream++;
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < (n + 65535) >> 16; c++) {
        gp_rng r = gp_rng_stream(11, RNG_PURPOSE_TEST, stream, (uint64_t)c);
        for (int64_t i = c << 16; i < GP_MIN(n, (c + 1) << 16); i++)
            h[i] = (int32_t)(lo + (int64_t)gp_rng_below64(&r, (uint64_t)(hi - lo)));
    }
    return h;
}

void *bk_upload(const void *host, size_t bytes)
{
    void *p = bk_alloc(bytes);
    CK(cudaMemcpy(p, host, bytes, cudaMemcpyHostToDevice));
    CK(cudaDeviceSynchronize()); /* a copy from pageable memory may return before it lands */
    return p;
}

int32_t *bk_rand_ids(int64_t n, int64_t lo, int64_t hi)
{
    int32_t *h = bk_host_ids(n, lo, hi);
    int32_t *d = bk_upload(h, (size_t)n * sizeof *h);
    free(h);
    return d;
}

int64_t bk_distinct(const int32_t *ids, int64_t n, int64_t range)
{
    uint8_t *seen = gp_xcalloc((size_t)range, 1);
    int64_t d = 0;
    for (int64_t i = 0; i < n; i++)
        if (ids[i] >= 0 && ids[i] < range && !seen[ids[i]]) {
            seen[ids[i]] = 1;
            d++;
        }
    free(seen);
    return d;
}

#define CHECK_N ((int64_t)4 << 20)

int bk_finite_f32(const float *dev, int64_t n)
{
    int64_t m = GP_MIN(n, CHECK_N);
    float *h = gp_xmalloc((size_t)(m ? m : 1) * sizeof *h);
    CK(cudaStreamSynchronize(BK.s));
    CK(cudaMemcpy(h, dev, (size_t)m * sizeof *h, cudaMemcpyDeviceToHost));
    int ok = 1;
    for (int64_t i = 0; i < m && ok; i++)
        ok = !isnan(h[i]);
    free(h);
    return ok;
}

int bk_finite_bf16(const gp_bf16 *dev, int64_t n)
{
    int64_t m = GP_MIN(n, CHECK_N);
    uint16_t *h = gp_xmalloc((size_t)(m ? m : 1) * sizeof *h);
    CK(cudaStreamSynchronize(BK.s));
    CK(cudaMemcpy(h, dev, (size_t)m * sizeof *h, cudaMemcpyDeviceToHost));
    int ok = 1;
    for (int64_t i = 0; i < m && ok; i++)
        ok = !((h[i] & 0x7f80) == 0x7f80 && (h[i] & 0x7f));
    free(h);
    return ok;
}

/* ---- timing ---- */

int bk_sets(double bytes_per_set)
{
    if (bytes_per_set <= 0)
        return 1;
    double want = 2.0 * (double)BK.l2_bytes / bytes_per_set;
    int n = (int)ceil(want);
    return n < 1 ? 1 : n > 16 ? 16 : n;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double batch_us(bk_launch_fn fn, void *arg, int n_sets, int k, int *ctr, cudaEvent_t a, cudaEvent_t b, int rep)
{
    CK(cudaMemsetAsync(BK.flush, rep & 0xff, BK.flush_bytes, BK.s));
    CK(cudaEventRecord(a, BK.s));
    for (int j = 0; j < k; j++)
        fn(arg, (*ctr)++ % n_sets);
    CK(cudaEventRecord(b, BK.s));
    CK(cudaEventSynchronize(b));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, a, b));
    return 1e3 * (double)ms / k;
}

bk_timing bk_time(bk_launch_fn fn, void *arg, int n_sets)
{
    bk_timing t = {0};
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    int ctr = 0;
    for (int i = 0; i < n_sets; i++)
        fn(arg, i);
    CK(cudaStreamSynchronize(BK.s));
    double probe = INFINITY;
    for (int i = 0; i < 3; i++)
        probe = fmin(probe, batch_us(fn, arg, n_sets, 1, &ctr, a, b, i));
    int k = probe >= 100.0 ? 1 : (int)ceil(100.0 / fmax(probe, 1.0));
    if (k > 16)
        k = 16;
    double *us = gp_xcalloc((size_t)BK.reps, sizeof *us);
    for (int r = 0; r < BK.reps; r++)
        us[r] = batch_us(fn, arg, n_sets, k, &ctr, a, b, r);
    qsort(us, (size_t)BK.reps, sizeof *us, cmp_double);
    t.med_us = 0.5 * (us[(BK.reps - 1) / 2] + us[BK.reps / 2]);
    t.min_us = us[0];
    t.max_us = us[BK.reps - 1];
    t.reps = BK.reps;
    t.per_batch = k;
    t.sets = n_sets;
    free(us);
    CK(cudaEventDestroy(a));
    CK(cudaEventDestroy(b));
    return t;
}

void bk_gemm(const gemm_args *a)
{
    gp_err e = {{0}};
    if (gemm_run(BK.gemm, a, BK.s, &e) != 0)
        bk_die("gemm_run", __FILE__, __LINE__, e.msg);
    CK(cudaGetLastError());
}

int bk_gemm_try(const gemm_args *a, gp_err *e)
{
    if (gemm_run(BK.gemm, a, BK.s, e) != 0)
        return -1;
    cudaError_t ce = cudaStreamSynchronize(BK.s);
    if (ce == cudaSuccess)
        ce = cudaGetLastError();
    if (ce != cudaSuccess)
        bk_die("gemm_run (trial)", __FILE__, __LINE__, cudaGetErrorString(ce)); /* a device fault is sticky */
    return 0;
}

/* ---- reporting ---- */

static void json_str(FILE *f, const char *key, const char *v)
{
    fprintf(f, "\"%s\":\"", key);
    for (const char *p = v ? v : ""; *p; p++) {
        if (*p == '"' || *p == '\\')
            fputc('\\', f);
        if ((unsigned char)*p >= 0x20)
            fputc(*p, f);
    }
    fputs("\",", f);
}

static void json_num(FILE *f, const char *key, double v)
{
    if (isfinite(v))
        fprintf(f, "\"%s\":%.6g,", key, v);
    else
        fprintf(f, "\"%s\":null,", key);
}

void bk_table_header(void)
{
    printf("%-24s %-36s %-44s %10s %8s %6s %8s %6s %9s\n", "kernel", "shape", "variant", "time us", "GB/s", "%copy",
           "TFLOP/s", "%gemm", "vs ours");
}

static void emit(const bk_meas *m, double us, const bk_timing *t, int finite, int modeled, const char *how)
{
    int ours = strcmp(m->variant, "ours") == 0;
    char key[200];
    snprintf(key, sizeof key, "%s|%s", m->group, m->shape);
    double ours_us = NAN;
    if (ours) {
        snprintf(ours_key[n_ours % N_OURS], sizeof ours_key[0], "%s", key);
        ours_us_tab[n_ours % N_OURS] = us;
        n_ours++;
    } else {
        for (int k = n_ours - 1; k >= 0 && k >= n_ours - N_OURS; k--)
            if (strcmp(ours_key[k % N_OURS], key) == 0) {
                ours_us = ours_us_tab[k % N_OURS];
                break;
            }
    }
    double gbps = m->min_bytes > 0 ? m->min_bytes / (us * 1e-6) / 1e9 : NAN;
    double tflops = m->flops > 0 ? m->flops / (us * 1e-6) / 1e12 : NAN;
    double pct_copy = 100 * gbps / BK.copy_gbps, pct_gemm = 100 * tflops / BK.gemm_tflops;
    char c1[16] = "", c2[16] = "", c3[16] = "", c4[16] = "", c5[16] = "";
    if (isfinite(gbps)) {
        snprintf(c1, sizeof c1, "%.0f", gbps);
        snprintf(c2, sizeof c2, "%.0f", pct_copy);
    }
    if (isfinite(tflops)) {
        snprintf(c3, sizeof c3, "%.1f", tflops);
        snprintf(c4, sizeof c4, "%.1f", pct_gemm);
    }
    if (isfinite(ours_us))
        snprintf(c5, sizeof c5, "%.2fx", us / ours_us);
    printf("%-24s %-36s %-44.44s %10.2f %8s %6s %8s %6s %9s%s%s\n", m->group, m->shape, m->variant, us, c1, c2, c3, c4,
           c5, modeled ? "  (modeled)" : "", finite ? "" : "  NaN IN OUTPUT");
    fflush(stdout);
    if (!BK.json)
        return;
    FILE *f = BK.json;
    fputc('{', f);
    json_str(f, "kind", "kernel");
    json_str(f, "group", m->group);
    json_str(f, "shape", m->shape);
    json_str(f, "variant", m->variant);
    json_str(f, "impl", m->impl);
    fprintf(f, "\"modeled\":%s,", modeled ? "true" : "false");
    if (modeled)
        json_str(f, "how", how);
    json_num(f, "time_us", us);
    if (t) {
        json_num(f, "min_us", t->min_us);
        json_num(f, "max_us", t->max_us);
        fprintf(f, "\"reps\":%d,\"per_batch\":%d,\"sets\":%d,", t->reps, t->per_batch, t->sets);
        json_num(f, "set_bytes", m->set_bytes);
        fprintf(f, "\"l2_resident\":%s,", m->set_bytes * t->sets <= (double)BK.l2_bytes ? "true" : "false");
    }
    json_num(f, "min_bytes", m->min_bytes);
    json_num(f, "moved_bytes", m->moved_bytes > 0 ? m->moved_bytes : m->min_bytes);
    json_num(f, "gbps", gbps);
    json_num(f, "pct_copy", pct_copy);
    json_num(f, "flops", m->flops > 0 ? m->flops : NAN);
    json_num(f, "tflops", tflops);
    json_num(f, "pct_gemm", pct_gemm);
    json_num(f, "ours_us", ours_us);
    json_num(f, "alt_over_ours", us / ours_us);
    fprintf(f, "\"outputs_finite\":%s,", finite ? "true" : "false");
    json_str(f, "note", m->note);
    fprintf(f, "\"copy_ceiling_gbps\":%.1f,\"gemm_ceiling_tflops\":%.1f}\n", BK.copy_gbps, BK.gemm_tflops);
    fflush(f);
}

void bk_report(const bk_meas *m, const bk_timing *t, int finite) { emit(m, t->med_us, t, finite, 0, NULL); }

void bk_report_modeled(const bk_meas *m, const char *how)
{
    double bytes = m->moved_bytes > 0 ? m->moved_bytes : m->min_bytes;
    double us = bytes / (BK.copy_gbps * 1e9) * 1e6;
    if (m->flops > 0)
        us = fmax(us, m->flops / (BK.gemm_tflops * 1e12) * 1e6);
    emit(m, us, NULL, 1, 1, how);
}

void bk_report_skipped(const bk_meas *m, const char *why)
{
    printf("%-24s %-36s %-44.44s skipped: %s\n", m->group, m->shape, m->variant, why);
    fflush(stdout);
    if (!BK.json)
        return;
    fputc('{', BK.json);
    json_str(BK.json, "kind", "kernel");
    json_str(BK.json, "group", m->group);
    json_str(BK.json, "shape", m->shape);
    json_str(BK.json, "variant", m->variant);
    json_str(BK.json, "impl", m->impl);
    json_str(BK.json, "skipped", why);
    fprintf(BK.json, "\"time_us\":null}\n");
    fflush(BK.json);
}
