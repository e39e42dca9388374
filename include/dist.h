/* dist: the process group of a data-parallel run (one process per GPU).
 *
 * - Who we are: dist_env_detect reads the rank, the world size and the local rank from whichever
 *   launcher started us: our own (`gpsdrec train --nproc N`, which sets the torchrun variables),
 *   torchrun (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), Open MPI's
 *   mpirun (OMPI_COMM_WORLD_*), MPICH/Hydra (PMI_RANK, PMI_SIZE, MPI_LOCALRANKID) or Slurm's srun
 *   (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID inside a job step). No launcher = world 1.
 * - Rendezvous: rank 0 listens on MASTER_ADDR:MASTER_PORT (all interfaces), every other rank
 *   connects (retrying until the timeout) with two TCP connections: one for the host
 *   collectives below, one watched by a monitor thread. Both carry a handshake (magic, version,
 *   rank, world, a job tag) so two jobs that share a port fail clearly instead of mixing.
 * - Host collectives over the data connections (star through rank 0): broadcast, sum-all-reduce
 *   of doubles / floats / int64 (rank 0 adds the ranks' buffers in rank order, so the result is
 *   deterministic and bit-identical on every rank), all-gather of variable-sized byte blocks,
 *   barrier. Each waits at most `timeout_s` for a peer, then fails naming the peer. They carry
 *   small data: counts, losses, predictions, and the CPU backend's gradients; the GPU backend's
 *   gradients go through NCCL, whose unique id is broadcast here.
 * - Failure: a rank that exits without dist_finalize (crash, kill, error) closes its connections;
 *   rank 0's monitor sees it and tells every other rank; a rank that stops on an error sends its
 *   message first (dist_abort). Every monitor then runs the registered abort hook (the GPU
 *   backend aborts its NCCL communicator) and ends the process with exit status DIST_EXIT_PEER,
 *   after printing which rank failed and why, so no rank hangs in a collective.
 * - One dist_ctx per process, passed explicitly; nothing is global except what the monitor
 *   thread shares with its own context.
 */
#ifndef GPSDREC_DIST_H
#define GPSDREC_DIST_H

#include <stddef.h>
#include <stdint.h>

#include "util.h"

#define DIST_EXIT_PEER 3 /* exit status of a rank stopped because another one failed */

typedef struct {
    int rank, world, local_rank, local_world;
    char master_addr[256];
    int master_port;
    char source[16]; /* "single", "torchrun", "gpsdrec", "mpirun", "slurm" */
} dist_env;

/* Fills env from the environment (world 1 when no launcher is seen); fails naming the variable
 * and its value when they are inconsistent. */
int dist_env_detect(dist_env *env, gp_err *e);

/* The first host name of a Slurm node list ("node[01-04,07],gpu2" -> "node01"). */
int dist_slurm_first_host(const char *nodelist, char *out, size_t n);

typedef struct dist_ctx dist_ctx;

/* Joins the group described by env (world 1: no sockets, every collective is a copy). */
dist_ctx *dist_init(const dist_env *env, double timeout_s, gp_err *e);
int dist_rank(const dist_ctx *d);
int dist_world(const dist_ctx *d);
int dist_local_rank(const dist_ctx *d);
int dist_local_world(const dist_ctx *d); /* ranks on this node */

int dist_bcast(dist_ctx *d, void *buf, size_t bytes, gp_err *e);
int dist_allreduce_f64(dist_ctx *d, double *v, size_t n, gp_err *e);
int dist_allreduce_f32(dist_ctx *d, float *v, size_t n, gp_err *e);
int dist_allreduce_i64(dist_ctx *d, int64_t *v, size_t n, gp_err *e);
/* Every rank contributes `bytes` bytes; *out receives all blocks in rank order (malloc'ed, the
 * caller frees) and offsets[r] (world + 1 entries, may be NULL) where block r starts. */
int dist_allgather(dist_ctx *d, const void *mine, size_t bytes, void **out, size_t *offsets, gp_err *e);
int dist_barrier(dist_ctx *d, gp_err *e);

/* Called by the monitor thread before it ends the process on a peer's failure. */
void dist_set_abort_hook(dist_ctx *d, void (*hook)(void *), void *arg);

/* This rank stops on an error: tell the others (they print `why` and stop), then close. */
void dist_abort(dist_ctx *d, const char *why);
/* A clean end: a barrier, then the connections close without alarming the monitors. */
int dist_finalize(dist_ctx *d, gp_err *e);
/* Frees without the barrier (after dist_abort, or world 1). */
void dist_free(dist_ctx *d);

/* `gpsdrec CMD ... --nproc N`: starts N copies of this command line as ranks 0..N-1 of one node
 * (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR=127.0.0.1, a free MASTER_PORT),
 * waits for them, and when one fails gives the others `grace_s` seconds to stop on their own
 * before killing them. Returns the exit status for the whole job (0, or the first failure's). */
int dist_launch(int nproc, int argc, char **argv, double grace_s);

/* Whether the environment already describes a rank (so --nproc must not start more). */
int dist_env_present(void);

#endif
