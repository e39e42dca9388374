/* Data parallelism on the CPU: launcher environments, the TCP rendezvous and host collectives
 * between forked ranks, a rank's death stopping the others, and training on 1, 2 and 3 ranks
 * (through `gpsdrec train --nproc N`, the CPU backend) giving the same model. */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "dist.h"
#include "safetensors.h"
#include "synth.h"
#include "test.h"

/* ---- environment detection ---- */

static const char *const launcher_vars[] = {
    "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GPSDREC_LAUNCHER",
    "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE",
    "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID",
    "SLURM_NTASKS_PER_NODE", "SLURM_TASKS_PER_NODE", "SLURM_STEP_ID", "SLURM_STEPID", "SLURM_JOB_NODELIST",
    "SLURM_STEP_NODELIST", "SLURM_JOB_ID"};
#define N_VARS ((int)(sizeof launcher_vars / sizeof launcher_vars[0]))

static char *saved_env[N_VARS];

static void env_save_clear(void)
{
    for (int i = 0; i < N_VARS; i++) {
        const char *v = getenv(launcher_vars[i]);
        saved_env[i] = v ? gp_xstrdup(v) : NULL;
        unsetenv(launcher_vars[i]);
    }
}

static void env_restore(void)
{
    for (int i = 0; i < N_VARS; i++) {
        if (saved_env[i])
            setenv(launcher_vars[i], saved_env[i], 1);
        else
            unsetenv(launcher_vars[i]);
        free(saved_env[i]);
        saved_env[i] = NULL;
    }
}

TEST(dist_env_detects_each_launcher)
{
    env_save_clear();
    dist_env d;
    gp_err e = {{0}};
    CHECK(dist_env_detect(&d, &e) == 0 && d.world == 1 && d.rank == 0 && strcmp(d.source, "single") == 0,
          "no launcher: world %d source %s", d.world, d.source);

    setenv("RANK", "3", 1), setenv("WORLD_SIZE", "8", 1), setenv("LOCAL_RANK", "1", 1);
    setenv("LOCAL_WORLD_SIZE", "2", 1), setenv("MASTER_ADDR", "node7", 1), setenv("MASTER_PORT", "4242", 1);
    CHECK(dist_env_detect(&d, &e) == 0, "%s", e.msg);
    CHECK(d.rank == 3 && d.world == 8 && d.local_rank == 1 && d.local_world == 2 && d.master_port == 4242 &&
              strcmp(d.master_addr, "node7") == 0 && strcmp(d.source, "torchrun") == 0,
          "torchrun: %d/%d local %d/%d %s:%d %s", d.rank, d.world, d.local_rank, d.local_world, d.master_addr,
          d.master_port, d.source);
    setenv("RANK", "8", 1);
    CHECK(dist_env_detect(&d, &e) != 0 && strstr(e.msg, "RANK=8"), "rank beyond world accepted: %s", e.msg);
    setenv("RANK", "x", 1);
    CHECK(dist_env_detect(&d, &e) != 0 && strstr(e.msg, "RANK=\"x\""), "non-numeric rank accepted: %s", e.msg);
    env_restore();

    env_save_clear();
    setenv("OMPI_COMM_WORLD_RANK", "1", 1), setenv("OMPI_COMM_WORLD_SIZE", "2", 1);
    setenv("OMPI_COMM_WORLD_LOCAL_RANK", "1", 1), setenv("OMPI_COMM_WORLD_LOCAL_SIZE", "2", 1);
    CHECK(dist_env_detect(&d, &e) == 0 && d.rank == 1 && d.world == 2 && d.local_rank == 1 &&
              strcmp(d.source, "mpirun") == 0 && strcmp(d.master_addr, "127.0.0.1") == 0 && d.master_port == 29500,
          "mpirun one node: %s", e.msg);
    setenv("OMPI_COMM_WORLD_SIZE", "4", 1); /* two nodes of two: rank 0's host is unknown */
    CHECK(dist_env_detect(&d, &e) != 0 && strstr(e.msg, "MASTER_ADDR"), "multi-node mpirun without MASTER_ADDR: %s",
          e.msg);
    env_restore();

    env_save_clear();
    setenv("PMI_RANK", "0", 1), setenv("PMI_SIZE", "3", 1);
    CHECK(dist_env_detect(&d, &e) == 0 && d.world == 3 && strcmp(d.source, "mpirun") == 0, "hydra: %s", e.msg);
    env_restore();

    env_save_clear();
    setenv("SLURM_PROCID", "5", 1), setenv("SLURM_NTASKS", "8", 1), setenv("SLURM_LOCALID", "1", 1);
    setenv("SLURM_TASKS_PER_NODE", "4(x2)", 1), setenv("SLURM_JOB_NODELIST", "gpu[07-08]", 1);
    setenv("SLURM_JOB_ID", "123", 1);
    /* the batch script itself (no job step) is not a rank */
    CHECK(dist_env_detect(&d, &e) == 0 && d.world == 1, "an sbatch script taken for a rank");
    setenv("SLURM_STEP_ID", "0", 1);
    CHECK(dist_env_detect(&d, &e) == 0, "%s", e.msg);
    CHECK(d.rank == 5 && d.world == 8 && d.local_rank == 1 && d.local_world == 4 && strcmp(d.source, "slurm") == 0 &&
              strcmp(d.master_addr, "gpu07") == 0 && d.master_port == 20123,
          "slurm: %d/%d local %d/%d %s:%d", d.rank, d.world, d.local_rank, d.local_world, d.master_addr,
          d.master_port);
    env_restore();
}

TEST(dist_slurm_nodelist_first_host)
{
    char h[64];
    CHECK(dist_slurm_first_host("node[01-04,07],gpu2", h, sizeof h) == 0 && strcmp(h, "node01") == 0, "%s", h);
    CHECK(dist_slurm_first_host("a1,b2", h, sizeof h) == 0 && strcmp(h, "a1") == 0, "%s", h);
    CHECK(dist_slurm_first_host("x[9]", h, sizeof h) == 0 && strcmp(h, "x9") == 0, "%s", h);
    CHECK(dist_slurm_first_host("", h, sizeof h) != 0, "empty list accepted");
    CHECK(dist_slurm_first_host("bad[", h, sizeof h) != 0, "unterminated range accepted");
}

/* ---- forked ranks ---- */

static int free_tcp_port(void)
{
    /* a port unlikely to collide with parallel test runs */
    return 30000 + (int)(getpid() % 20000) + (int)(time(NULL) % 97);
}

typedef int (*rank_body)(dist_ctx *d, int rank, int world, void *arg);

/* Runs body in `world` forked ranks; returns how many ranks ended with each status in
 * status_out[rank] (exit status, or 128 + signal). */
static void run_ranks(int world, rank_body body, void *arg, int port, double timeout, int *status_out)
{
    pid_t pid[16];
    fflush(stdout);
    fflush(stderr);
    for (int r = 0; r < world; r++) {
        pid[r] = fork();
        if (pid[r] == 0) {
            dist_env env = {.rank = r, .world = world, .local_rank = r, .local_world = world, .master_port = port};
            snprintf(env.master_addr, sizeof env.master_addr, "127.0.0.1");
            snprintf(env.source, sizeof env.source, "test");
            gp_err e = {{0}};
            dist_ctx *d = dist_init(&env, timeout, &e);
            if (!d) {
                fprintf(stderr, "rank %d: %s\n", r, e.msg);
                _exit(40);
            }
            int rc = body(d, r, world, arg);
            if (rc == 0 && dist_finalize(d, &e) != 0) {
                fprintf(stderr, "rank %d: finalize: %s\n", r, e.msg);
                rc = 41;
            }
            dist_free(d);
            _exit(rc);
        }
    }
    for (int r = 0; r < world; r++) {
        int st = 0;
        waitpid(pid[r], &st, 0);
        status_out[r] = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    }
}

static int collectives_body(dist_ctx *d, int rank, int world, void *arg)
{
    gp_err e = {{0}};
    double v[3] = {rank + 0.5, 1e-3 * rank, -1.0};
    if (dist_allreduce_f64(d, v, 3, &e) != 0)
        return 10;
    double want0 = 0, want1 = 0;
    for (int r = 0; r < world; r++)
        want0 += r + 0.5, want1 += 1e-3 * r;
    if (v[0] != want0 || fabs(v[1] - want1) > 1e-12 || v[2] != -world)
        return 11;
    float f[2] = {(float)rank, 1.0f};
    if (dist_allreduce_f32(d, f, 2, &e) != 0 || f[1] != (float)world || f[0] != (float)(world * (world - 1) / 2))
        return 12;
    int64_t c[1] = {(int64_t)1 << (40 + rank)};
    int64_t wc = 0;
    for (int r = 0; r < world; r++)
        wc += (int64_t)1 << (40 + r);
    if (dist_allreduce_i64(d, c, 1, &e) != 0 || c[0] != wc)
        return 13;
    char msg[32] = "";
    if (rank == 0)
        snprintf(msg, sizeof msg, "from rank zero");
    if (dist_bcast(d, msg, sizeof msg, &e) != 0 || strcmp(msg, "from rank zero") != 0)
        return 14;
    /* rank r contributes r+1 bytes of value r (rank 1 none: an empty block) */
    size_t mine = rank == 1 ? 0 : (size_t)rank + 1;
    char blk[16];
    memset(blk, rank, sizeof blk);
    void *all = NULL;
    size_t off[17];
    if (dist_allgather(d, blk, mine, &all, off, &e) != 0)
        return 15;
    for (int r = 0; r < world; r++) {
        size_t len = r == 1 ? 0 : (size_t)r + 1;
        if (off[r + 1] - off[r] != len)
            return 16;
        for (size_t i = 0; i < len; i++)
            if (((char *)all)[off[r] + i] != (char)r)
                return 17;
    }
    free(all);
    return dist_barrier(d, &e) == 0 ? 0 : 18;
}

TEST(dist_collectives_between_forked_ranks)
{
    int st[16];
    run_ranks(3, collectives_body, NULL, free_tcp_port(), 30, st);
    for (int r = 0; r < 3; r++)
        CHECK(st[r] == 0, "rank %d ended with status %d", r, st[r]);
}

static int die_body(dist_ctx *d, int rank, int world, void *arg)
{
    gp_err e = {{0}};
    if (rank == world - 1)
        raise(SIGKILL);
    if (rank == 1 && arg)
        usleep(100 * 1000), dist_abort(d, "a test failure"), _exit(7);
    /* The survivors wait in a collective that can never complete. It may fail first (rank 0
     * reads the dead rank's closed data connection), racing the monitor: the contract is that the
     * monitor still ends the process with DIST_EXIT_PEER, so give it the time to. */
    dist_barrier(d, &e);
    sleep(10);
    return 50;
}

TEST(dist_dead_rank_stops_the_others)
{
    int st[16];
    double t0 = gp_now();
    run_ranks(3, die_body, NULL, free_tcp_port() + 1, 60, st);
    double took = gp_now() - t0;
    CHECK(st[2] == 128 + SIGKILL, "rank 2: %d", st[2]);
    CHECK(st[0] == DIST_EXIT_PEER && st[1] == DIST_EXIT_PEER, "survivors ended with %d and %d, want %d", st[0], st[1],
          DIST_EXIT_PEER);
    CHECK(took < 20, "the survivors took %.1f s to stop", took);
}

TEST(dist_abort_message_stops_the_others)
{
    int st[16];
    /* rank 2 kills itself too, but rank 1's abort comes first or not: either way nobody hangs */
    int one = 1;
    run_ranks(3, die_body, &one, free_tcp_port() + 2, 60, st);
    CHECK(st[1] == 7 || st[1] == DIST_EXIT_PEER, "rank 1: %d", st[1]);
    CHECK(st[0] == DIST_EXIT_PEER, "rank 0: %d", st[0]);
}

TEST(dist_join_timeout_names_the_missing_rank)
{
    dist_env env = {.rank = 0, .world = 2, .local_world = 2, .master_port = free_tcp_port() + 3};
    snprintf(env.master_addr, sizeof env.master_addr, "127.0.0.1");
    gp_err e = {{0}};
    dist_ctx *d = dist_init(&env, 1.0, &e);
    CHECK(!d && strstr(e.msg, "rank(s) 1 did not join"), "%s", e.msg);
    dist_free(d);
}

/* ---- training through the launcher ---- */

static const char *gpsdrec_bin(void) { return access("./gpsdrec", X_OK) == 0 ? "./gpsdrec" : NULL; }

static int run_cmd(const char *cmd)
{
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static char *dist_data(void)
{
    static char *path;
    if (path)
        return path;
    path = gp_path_join(test_tmp_dir(), "dist.gpsd");
    synth_config c = synth_default_config();
    c.n_users = 500;
    c.n_items = 300;
    c.n_cates = 10;
    c.n_topics = 20;
    c.mean_len = 12;
    c.protocol.max_history = 20;
    synth_report rep;
    gp_err e = {{0}};
    if (synth_generate(&c, path, &rep, &e) != 0)
        test_failure(__FILE__, __LINE__, "%s", e.msg);
    return path;
}

static int train_cmd(const char *out, const char *extra)
{
    char cmd[4096];
    snprintf(cmd, sizeof cmd,
             "%s train --set data=%s --set device=cpu --set threads=1 --set dim=16 --set n_layers=1 --set n_heads=2 "
             "--set max_history=20 --set n_negatives=16 --set batch_size=24 --set warmup_steps=3 --set log_every=1 "
             "--set max_steps=12 --set eval_max_samples=200 --set out_dir=%s/%s %s > %s/%s.out 2>&1",
             gpsdrec_bin(), dist_data(), test_tmp_dir(), out, extra, test_tmp_dir(), out);
    return run_cmd(cmd);
}

/* Largest |a - b| over every tensor, relative to the largest |a| of that tensor. */
static double model_diff(const char *a_out, const char *b_out, char *worst, size_t n)
{
    char pa[1024], pb[1024];
    snprintf(pa, sizeof pa, "%s/%s/model.safetensors", test_tmp_dir(), a_out);
    snprintf(pb, sizeof pb, "%s/%s/model.safetensors", test_tmp_dir(), b_out);
    st_file fa, fb;
    gp_err e = {{0}};
    if (st_open(&fa, pa, &e) != 0)
        return snprintf(worst, n, "%s", e.msg), INFINITY;
    if (st_open(&fb, pb, &e) != 0) {
        st_close(&fa);
        return snprintf(worst, n, "%s", e.msg), INFINITY;
    }
    double max_rel = 0;
    for (int t = 0; t < fa.n; t++) {
        const st_tensor *ta = &fa.tensors[t], *tb = st_find(&fb, ta->name);
        if (!tb || tb->numel != ta->numel || ta->dtype != ST_F32) {
            snprintf(worst, n, "tensor %s differs in shape", ta->name);
            max_rel = INFINITY;
            break;
        }
        const float *x = ta->data, *y = tb->data;
        double scale = 1e-12, d = 0;
        for (int64_t i = 0; i < ta->numel; i++) {
            scale = fmax(scale, fabs(x[i]));
            d = fmax(d, fabs((double)x[i] - y[i]));
        }
        if (d / scale > max_rel) {
            max_rel = d / scale;
            snprintf(worst, n, "%s", ta->name);
        }
    }
    st_close(&fa);
    st_close(&fb);
    return max_rel;
}

TEST(dist_training_on_2_and_3_ranks_matches_one)
{
    REQUIRE(gpsdrec_bin(), "./gpsdrec not built (run from the repository root after make)");
    char worst[256] = "";
    /* pretraining: item table trained, its rows exchanged (auto picks rows here) */
    REQUIRE(train_cmd("dp1", "") == 0, "1-rank run failed: see %s/dp1.out", test_tmp_dir());
    REQUIRE(train_cmd("dp2", "--nproc 2") == 0, "2-rank run failed: see %s/dp2.out", test_tmp_dir());
    double d2 = model_diff("dp1", "dp2", worst, sizeof worst);
    CHECK(d2 < 1e-3, "2 ranks vs 1: max relative difference %.3g in %s", d2, worst);
    /* 24 sequences over 3 ranks: 8 each; dense exchange of the item table forced */
    REQUIRE(train_cmd("dp3", "--nproc 3 --set dist_item_grads=dense") == 0, "3-rank run failed: see %s/dp3.out",
            test_tmp_dir());
    double d3 = model_diff("dp1", "dp3", worst, sizeof worst);
    CHECK(d3 < 1e-3, "3 ranks (dense) vs 1: max relative difference %.3g in %s", d3, worst);
    /* an uneven split (24 over 5: 4-5 each) with grad accumulation and the rows exchange forced */
    REQUIRE(train_cmd("dpa1", "--set grad_accum=2 --set max_steps=6") == 0, "accum run failed");
    REQUIRE(train_cmd("dpa5", "--nproc 5 --set grad_accum=2 --set max_steps=6 --set dist_item_grads=rows") == 0,
            "5-rank run failed: see %s/dpa5.out", test_tmp_dir());
    double d5 = model_diff("dpa1", "dpa5", worst, sizeof worst);
    CHECK(d5 < 1e-3, "5 uneven ranks vs 1: max relative difference %.3g in %s", d5, worst);
    /* and the difference is real: another seed trains another model */
    REQUIRE(train_cmd("dps", "--set seed=5") == 0, "seed run failed");
    double ds = model_diff("dp1", "dps", worst, sizeof worst);
    CHECK(ds > 1e-2, "a different seed gave a model only %.3g away: the comparison cannot fail", ds);
}

TEST(dist_killed_rank_ends_the_job)
{
    REQUIRE(gpsdrec_bin(), "./gpsdrec not built");
    double t0 = gp_now();
    setenv("GPSDREC_FAULT", "1:4", 1);
    int st = train_cmd("dpkill", "--nproc 2 --set max_steps=1000");
    unsetenv("GPSDREC_FAULT");
    double took = gp_now() - t0;
    CHECK(st != 0, "the job succeeded although rank 1 was killed");
    CHECK(took < 60, "the job took %.0f s to end", took);
    char path[1024], *out = NULL;
    snprintf(path, sizeof path, "%s/dpkill.out", test_tmp_dir());
    gp_err e;
    REQUIRE(gp_read_file(path, &out, NULL, &e) == 0, "%s", e.msg);
    CHECK(strstr(out, "rank 1 was killed by signal 9"), "no clear message about rank 1:\n%s", out);
    free(out);
}

TEST(dist_resume_with_another_rank_count)
{
    REQUIRE(gpsdrec_bin(), "./gpsdrec not built");
    char worst[256] = "";
    REQUIRE(train_cmd("dpr1", "") == 0, "reference run failed");
    /* 2 ranks stop after 5 steps with a checkpoint, 3 ranks finish the run */
    REQUIRE(train_cmd("dpr", "--nproc 2 --set stop_after_steps=5") == 0, "2-rank part failed: see %s/dpr.out",
            test_tmp_dir());
    REQUIRE(train_cmd("dpr", "--nproc 3") == 0, "3-rank resume failed: see %s/dpr.out", test_tmp_dir());
    char path[1024], *out = NULL;
    snprintf(path, sizeof path, "%s/dpr.out", test_tmp_dir());
    gp_err e;
    REQUIRE(gp_read_file(path, &out, NULL, &e) == 0, "%s", e.msg);
    CHECK(strstr(out, "resuming from"), "the 3-rank run did not resume:\n%s", out);
    free(out);
    double d = model_diff("dpr1", "dpr", worst, sizeof worst);
    CHECK(d < 1e-3, "2 then 3 ranks vs 1 uninterrupted: max relative difference %.3g in %s", d, worst);
}
