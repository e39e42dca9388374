/* synth: the synthetic behaviour generator (see include/synth.h for the contract).
 *
 * The generative process
 * World (built once from the seed):
 *   - items 1..N, each with a Zipf popularity weight w_i = rank^-zipf_exponent (ranks a random
 *     permutation, so popularity is not id order) and one latent topic. Topic sizes follow a mild
 *     power law; every topic has at least one item. Topics are finer than categories.
 *   - categories with power-law sizes: each topic has a primary and a secondary category; an
 *     item takes the primary (75%), the secondary (15%) or a random category (10%), so topics
 *     cross categories and category co-occurrence is only a blurred view of topic co-occurrence.
 *   - a global topic-to-topic transition: every topic has 4 neighbour topics (weights
 *     .4 .3 .2 .1), drawn by topic popularity (a second power law over topics).
 *   - every item has 1-3 fixed successors (complements, weights 1/(j+1)), half from its own
 *     topic by popularity, half from anywhere by popularity: item-to-item transitions that only
 *     memorisation (capacity) captures.
 *   - life cycles: the two-year horizon is cut into 8 epochs; every item is born in one of 11
 *     birth groups (3 before the horizon, 8 inside) and is alive for 4 epochs. 80% of topic and
 *     popularity draws pick only alive items (when a topic has none alive, all of its items), so
 *     popularity drifts over time and old best-sellers fade: all-time popularity is a stale
 *     signal for the late (test) users.
 * User u (its own random streams, so the output is the same for any thread count):
 *   - length: lognormal (sigma 0.9) with mu solved so the clipped mean is mean_len, rounded and
 *     clipped to [min_len, max_len].
 *   - long-term interests: 1-4 topics (the first by topic popularity, the others neighbours of an
 *     earlier one or by popularity) with Dirichlet(1/2) weights. After each interaction, with
 *     probability `drift`, one interest is replaced by a neighbour of it or a popular topic.
 *   - short-term state: the current topic. Each step it stays with probability `stickiness`;
 *     otherwise it jumps to a neighbour of the current topic (30%) or to a long-term interest.
 *   - emission: with probability transition_prob (when there is a previous item) a successor of
 *     the previous item; otherwise: 20% an item uniform over all items (one-off interactions,
 *     the noise that caps every score), 10% an item by global popularity (exploration), 70% an
 *     item of the current topic by popularity; the last two among alive items 80% of the time.
 *   - time: a start uniform over two years, then sessions: a gap uniform in 30..569 s inside a
 *     session, and with probability 0.2 a new session after 1 h + Exp(2 days). The epoch (for
 *     life cycles) is the interaction's time over the two years, cut in 8.
 * So there are several time scales (item -> successor, sticky topic, slowly drifting interests,
 * global epochs) and long-range dependencies (interests seen far back return).
 *
 * The ceiling: for every TEST sample the oracle scores the candidate by synth_oracle_prob, the
 * exact probability of that item being the next interaction given the state just before it
 * (interests, current topic, previous item, epoch). Its AUC is the best any model can reach in
 * expectation on these samples; a model sees only items and categories and must infer the state.
 * Every draw is O(1): alias tables (per (topic, birth group) over its items, over topics) and
 * short linear scans over at most 4 entries.
 *
 * Why these constants: on the default config (3 seeds) they give ceiling AUC ~0.89, inferred
 * state ~0.86 (the ceiling is reachable from the history once the item -> topic map is learnt),
 * count-based history baseline ~0.79 and popularity ~0.69, close to what the same baselines
 * give on Amazon Beauty (history 0.72, popularity 0.62) with visible gaps between them; the
 * concentration of popularity (top 10% of items take ~40% of interactions) is Beauty's too.
 */
#include "synth.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "metrics.h"

/* Sub-purposes of gp_rng_stream(seed, RNG_PURPOSE_SYNTH, sub, index). */
enum {
    SUB_ITEM_RANK = 1,  /* popularity permutation of items */
    SUB_TOPIC_RANK = 2, /* size and popularity permutations of topics */
    SUB_CATE_RANK = 3,  /* size permutation of categories */
    SUB_TOPIC = 4,      /* per topic: categories, neighbours */
    SUB_ITEM_A = 5,     /* per item: topic, category */
    SUB_ITEM_B = 6,     /* per item: successors */
    SUB_LEN = 7,        /* per user: length */
    SUB_USER = 8,       /* per user: interests and behaviour */
    SUB_TIME = 9,       /* per user: timestamps */
};

#define N_NEIGHBORS 4
#define MAX_SUCC 3
#define N_EPOCHS 8
#define LIFETIME 4                          /* epochs an item is alive */
#define N_GROUPS (N_EPOCHS + LIFETIME - 1)  /* birth groups; group g is alive in epochs g-LIFETIME+1 .. g */
#define ALL_TIME N_EPOCHS                   /* epoch index meaning "ignore life cycles" */
static const double NEIGHBOR_W[N_NEIGHBORS] = {0.4, 0.3, 0.2, 0.1};
static const double SUCC_W[MAX_SUCC + 1][MAX_SUCC] = {{0, 0, 0}, {1, 0, 0}, {2.0 / 3, 1.0 / 3, 0}, {6.0 / 11, 3.0 / 11, 2.0 / 11}};
#define JUMP_TO_NEIGHBOR 0.3  /* share of topic jumps that follow the global transition */
#define EXPLORE 0.1           /* emissions by global popularity */
#define NOISE 0.2             /* emissions uniform over all items (one-off interactions) */
#define TIMELESS 0.2          /* popularity and topic emissions that ignore life cycles */
#define CATE_PRIMARY 0.75
#define CATE_SECONDARY 0.15
#define TOPIC_SIZE_EXPONENT 0.6
#define TOPIC_POP_EXPONENT 0.5
#define CATE_SIZE_EXPONENT 1.0
#define LEN_SIGMA 0.9
#define HORIZON_S (2 * 365 * 86400LL)
#define NEW_SESSION_PROB 0.2

/* What a step reads about an item, in one 16-byte line: its category (for the token) and its
 * successors (for the next step). */
typedef struct {
    uint32_t cate;
    uint32_t succ[MAX_SUCC]; /* 0 = none */
} item_rec;

/* One alias-table slot: the slot's item, the coin, and the item taken when the coin fails. */
typedef struct {
    float prob;
    uint32_t item;
    uint32_t alias;
} alias_slot;

/* Segment s = (topic c, birth group g) at c * N_GROUPS + g: its alias table is
 * slot[start .. next segment's start), mass the sum of its item weights. */
typedef struct {
    uint64_t start;
    double mass;
} segment;

/* How topic c emits at epoch e (0..N_EPOCHS, ALL_TIME last), at c * (N_EPOCHS + 1) + e: from the
 * birth groups [lo, hi) (the alive ones, or all when none is alive), of total weight mass. */
typedef struct {
    double mass;
    uint8_t lo, hi;
} emission;

struct synth_model {
    synth_config cfg;
    uint64_t n_items; /* real items, ids 1..n_items */
    uint32_t n_topics, n_cates;
    double len_mu; /* lognormal location; NAN = constant length len_const */
    uint32_t len_const;
    /* items, indexed by id (slot 0 unused) */
    float *item_w;
    item_rec *item;
    uint32_t *item_topic;
    uint8_t *item_group;  /* birth group */
    segment *seg;         /* T * N_GROUPS + 1 (the last holds the end) */
    alias_slot *slot;
    emission *emit;       /* T * (N_EPOCHS + 1) */
    /* global popularity at epoch e: topics by alive mass, then the topic's emission; epochs with
     * nothing alive fall back to ALL_TIME (pop_epoch[e]) */
    uint32_t pop_epoch[N_EPOCHS + 1];
    double pop_total[N_EPOCHS + 1];
    float *gpop_prob;     /* (N_EPOCHS + 1) alias tables over topics */
    uint32_t *gpop_alias;
    uint32_t *neighbor;   /* N_NEIGHBORS per topic */
    float *tpop_prob;     /* alias table over topics by topic popularity (users' interests) */
    uint32_t *tpop_alias;
};

/* ---- small samplers ---- */

/* rng.c's SplitMix64, gp_rng_uniform and gp_rng_below, inlined: the hot loop makes about ten
 * draws per interaction and the calls across translation units cost a fifth of the time. The
 * state advances exactly as in rng.c, so these mix freely with gp_rng_* calls on one stream. */
static inline uint64_t next_u64(gp_rng *r)
{
    uint64_t x = (r->state += 0x9e3779b97f4a7c15ULL);
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

static inline double uni(gp_rng *r) { return (double)(next_u64(r) >> 11) * 0x1.0p-53; }

static inline uint32_t below(gp_rng *r, uint32_t n)
{
    uint64_t m = (uint64_t)(uint32_t)next_u64(r) * n;
    uint32_t low = (uint32_t)m;
    if (low < n) {
        uint32_t threshold = (uint32_t)(-n) % n;
        while (low < threshold) {
            m = (uint64_t)(uint32_t)next_u64(r) * n;
            low = (uint32_t)m;
        }
    }
    return (uint32_t)(m >> 32);
}

static inline uint32_t alias_draw(const float *prob, const uint32_t *alias, uint32_t n, gp_rng *r)
{
    uint32_t k = below(r, n);
    return uni(r) < prob[k] ? k : alias[k];
}

/* Vose's alias method; deterministic for given weights. scratch holds n entries. */
static void alias_build(const double *w, uint32_t n, float *prob, uint32_t *alias, uint32_t *scratch, double *scaled)
{
    double sum = 0;
    for (uint32_t i = 0; i < n; i++)
        sum += w[i];
    uint32_t n_small = 0, n_large = 0; /* small grows from the front, large from the back */
    for (uint32_t i = 0; i < n; i++) {
        scaled[i] = sum > 0 ? w[i] * n / sum : 1.0;
        if (scaled[i] < 1.0)
            scratch[n_small++] = i;
        else
            scratch[n - 1 - n_large++] = i;
    }
    while (n_small && n_large) {
        uint32_t s = scratch[--n_small], l = scratch[n - n_large];
        prob[s] = (float)scaled[s];
        alias[s] = l;
        scaled[l] = (scaled[l] + scaled[s]) - 1.0;
        if (scaled[l] < 1.0) {
            n_large--;
            scratch[n_small++] = l;
        }
    }
    while (n_large) {
        uint32_t l = scratch[n - n_large--];
        prob[l] = 1.0f;
        alias[l] = l;
    }
    while (n_small) {
        uint32_t s = scratch[--n_small];
        prob[s] = 1.0f;
        alias[s] = s;
    }
}

/* Power-law weights (rank+1)^-s over a random permutation of ranks. */
static void powerlaw_weights(double *w, uint64_t n, double s, gp_rng *r)
{
    uint64_t *rank = gp_xmalloc(n * sizeof *rank);
    for (uint64_t i = 0; i < n; i++)
        rank[i] = i;
    for (uint64_t i = n; i > 1; i--) {
        uint64_t j = gp_rng_below64(r, i);
        uint64_t t = rank[i - 1];
        rank[i - 1] = rank[j];
        rank[j] = t;
    }
    for (uint64_t i = 0; i < n; i++)
        w[i] = pow((double)(rank[i] + 1), -s);
    free(rank);
}

static inline uint32_t topic_by_popularity(const synth_model *m, gp_rng *r)
{
    return alias_draw(m->tpop_prob, m->tpop_alias, m->n_topics, r);
}

static inline uint32_t topic_neighbor(const synth_model *m, uint32_t c, gp_rng *r)
{
    double u = uni(r), acc = 0;
    for (int j = 0; j < N_NEIGHBORS - 1; j++) {
        acc += NEIGHBOR_W[j];
        if (u < acc)
            return m->neighbor[(uint64_t)c * N_NEIGHBORS + j];
    }
    return m->neighbor[(uint64_t)c * N_NEIGHBORS + N_NEIGHBORS - 1];
}

/* An item of topic c at epoch e: a birth group by mass among the emission range, then the
 * group's alias table. */
static inline uint32_t item_in_topic(const synth_model *m, uint32_t c, uint32_t e, gp_rng *r)
{
    uint64_t idx = (uint64_t)c * (N_EPOCHS + 1) + e, seg0 = (uint64_t)c * N_GROUPS;
    const emission *em = &m->emit[idx];
    const segment *sg = &m->seg[seg0];
    uint32_t lo = em->lo, hi = em->hi, g = lo, last = lo;
    double u = uni(r) * em->mass;
    int chosen = 0;
    for (uint32_t k = lo; k < hi; k++) {
        double sm = sg[k].mass;
        if (sm <= 0)
            continue;
        last = k;
        if (u < sm) {
            g = k;
            chosen = 1;
            break;
        }
        u -= sm;
    }
    if (!chosen)
        g = last; /* rounding at the end of the range */
    uint64_t start = sg[g].start;
    uint32_t n = (uint32_t)(sg[g + 1].start - start);
    const alias_slot *a = &m->slot[start + below(r, n)];
    return uni(r) < a->prob ? a->item : a->alias;
}

static inline uint32_t item_by_popularity(const synth_model *m, uint32_t e, gp_rng *r)
{
    uint32_t pe = m->pop_epoch[e];
    uint32_t c = alias_draw(m->gpop_prob + (uint64_t)pe * m->n_topics, m->gpop_alias + (uint64_t)pe * m->n_topics,
                            m->n_topics, r);
    return item_in_topic(m, c, pe, r);
}

/* Probability that item_in_topic(c = topic of item, e) returns item. */
static inline double emit_prob(const synth_model *m, uint32_t item, uint32_t e)
{
    uint64_t idx = (uint64_t)m->item_topic[item] * (N_EPOCHS + 1) + e;
    uint32_t g = m->item_group[item];
    if (g < m->emit[idx].lo || g >= m->emit[idx].hi)
        return 0.0;
    return m->item_w[item] / m->emit[idx].mass;
}

/* ---- the user process ---- */

static uint32_t draw_interest(const synth_state *s, gp_rng *r)
{
    double u = uni(r), acc = 0;
    for (uint32_t k = 0; k + 1 < s->n_interests; k++) {
        acc += s->weight[k];
        if (u < acc)
            return s->interest[k];
    }
    return s->interest[s->n_interests - 1];
}

static void user_init(const synth_model *m, synth_state *s, gp_rng *r)
{
    memset(s, 0, sizeof *s);
    s->n_interests = 1 + gp_rng_below(r, SYNTH_MAX_INTERESTS);
    double sum = 0;
    for (uint32_t k = 0; k < s->n_interests; k++) {
        if (k == 0 || uni(r) >= 0.5)
            s->interest[k] = topic_by_popularity(m, r);
        else
            s->interest[k] = topic_neighbor(m, s->interest[gp_rng_below(r, k)], r);
        double z = gp_rng_normal(r);
        s->weight[k] = z * z + 1e-12; /* Gamma(1/2): Dirichlet(1/2) after normalising */
        sum += s->weight[k];
    }
    for (uint32_t k = 0; k < s->n_interests; k++)
        s->weight[k] /= sum;
    s->topic = draw_interest(s, r);
    s->prev_item = 0;
}

/* One interaction: topic transition, emission, then drift of the long-term interests. */
static uint32_t step(const synth_model *m, synth_state *s, gp_rng *r)
{
    const synth_config *c = &m->cfg;
    if (uni(r) >= c->stickiness)
        s->topic = uni(r) < JUMP_TO_NEIGHBOR ? topic_neighbor(m, s->topic, r) : draw_interest(s, r);
    uint32_t item;
    if (s->prev_item && uni(r) < c->transition_prob) {
        const uint32_t *sc = m->item[s->prev_item].succ;
        uint32_t n = sc[2] ? 3 : sc[1] ? 2 : 1;
        double u = uni(r), acc = 0;
        item = sc[n - 1];
        for (uint32_t j = 0; j + 1 < n; j++) {
            acc += SUCC_W[n][j];
            if (u < acc) {
                item = sc[j];
                break;
            }
        }
    } else {
        double v = uni(r);
        if (v < NOISE)
            item = 1 + below(r, (uint32_t)m->n_items);
        else if (v < NOISE + EXPLORE)
            item = item_by_popularity(m, uni(r) < TIMELESS ? ALL_TIME : s->epoch, r);
        else
            item = item_in_topic(m, s->topic, uni(r) < TIMELESS ? ALL_TIME : s->epoch, r);
    }
    s->prev_item = item;
    if (c->drift > 0 && uni(r) < c->drift) {
        uint32_t k = below(r, s->n_interests);
        s->interest[k] = uni(r) < 0.5 ? topic_neighbor(m, s->interest[k], r) : topic_by_popularity(m, r);
    }
    return item;
}

static inline uint32_t epoch_of(int64_t t)
{
    return t >= HORIZON_S ? N_EPOCHS - 1 : (uint32_t)(t * N_EPOCHS / HORIZON_S);
}

static inline int64_t next_gap(gp_rng *r)
{
    if (uni(r) < NEW_SESSION_PROB)
        return 3600 + (int64_t)(-log(1.0 - uni(r)) * 2 * 86400.0);
    return 30 + below(r, 540);
}

uint32_t synth_user_len(const synth_model *m, uint64_t u)
{
    if (isnan(m->len_mu))
        return m->len_const;
    gp_rng r = gp_rng_stream(m->cfg.seed, RNG_PURPOSE_SYNTH, SUB_LEN, u);
    double x = floor(exp(m->len_mu + LEN_SIGMA * gp_rng_normal(&r)) + 0.5);
    if (!(x >= m->cfg.min_len))
        return m->cfg.min_len;
    if (x > m->cfg.max_len)
        return m->cfg.max_len;
    return (uint32_t)x;
}

/* Generates user u's n interactions (items, and optionally categories and times); returns the
 * last time. Each item's record (category, successors) is prefetched as soon as it is drawn: the
 * next step may read its successors, and the categories are read after the loop, when the
 * records have arrived (reading them at once would stall on every draw). */
static int64_t user_generate(const synth_model *m, uint64_t u, uint32_t n, uint32_t *items, uint32_t *cates,
                             int64_t *times, synth_state *before_last)
{
    gp_rng rb = gp_rng_stream(m->cfg.seed, RNG_PURPOSE_SYNTH, SUB_USER, u);
    gp_rng rt = gp_rng_stream(m->cfg.seed, RNG_PURPOSE_SYNTH, SUB_TIME, u);
    synth_state s;
    user_init(m, &s, &rb);
    int64_t t = (int64_t)gp_rng_below64(&rt, HORIZON_S);
    for (uint32_t k = 0; k < n; k++) {
        if (k)
            t += next_gap(&rt);
        s.epoch = epoch_of(t);
        if (before_last && k + 1 == n)
            *before_last = s;
        items[k] = step(m, &s, &rb);
        __builtin_prefetch(&m->item[items[k]]);
        if (times)
            times[k] = t;
    }
    if (cates)
        for (uint32_t k = 0; k < n; k++)
            cates[k] = m->item[items[k]].cate;
    return t;
}

void synth_user_sequence(const synth_model *m, uint64_t u, uint32_t *items, int64_t *times, synth_state *before_last)
{
    user_generate(m, u, synth_user_len(m, u), items, NULL, times, before_last);
}

uint32_t synth_sample_next(const synth_model *m, const synth_state *s, gp_rng *r)
{
    synth_state copy = *s;
    return step(m, &copy, r);
}

uint32_t synth_item_topic(const synth_model *m, uint32_t item)
{
    return item >= 1 && item <= m->n_items ? m->item_topic[item] : UINT32_MAX;
}

double synth_oracle_prob(const synth_model *m, const synth_state *s, uint32_t item)
{
    if (item == 0 || item > m->n_items)
        return 0.0;
    const synth_config *cfg = &m->cfg;
    uint32_t c = m->item_topic[item];
    /* P(next topic == c) */
    double p_interest = 0, p_neighbor = 0;
    for (uint32_t k = 0; k < s->n_interests; k++)
        p_interest += s->interest[k] == c ? s->weight[k] : 0.0;
    for (int j = 0; j < N_NEIGHBORS; j++)
        p_neighbor += m->neighbor[(uint64_t)s->topic * N_NEIGHBORS + j] == c ? NEIGHBOR_W[j] : 0.0;
    double p_topic = cfg->stickiness * (s->topic == c) +
                     (1 - cfg->stickiness) * ((1 - JUMP_TO_NEIGHBOR) * p_interest + JUMP_TO_NEIGHBOR * p_neighbor);
    /* Global popularity picks a topic by its alive mass, then an alive item of it by weight:
     * overall, alive items in proportion to their weight. */
    uint32_t pe = m->pop_epoch[s->epoch], g = m->item_group[item];
    int alive = pe == ALL_TIME || (g >= pe && g < pe + LIFETIME);
    double p_global = (1 - TIMELESS) * (alive ? m->item_w[item] / m->pop_total[pe] : 0.0) +
                      TIMELESS * m->item_w[item] / m->pop_total[ALL_TIME];
    double p_emit = (1 - TIMELESS) * emit_prob(m, item, s->epoch) + TIMELESS * emit_prob(m, item, ALL_TIME);
    double p = NOISE / (double)m->n_items + EXPLORE * p_global + (1 - NOISE - EXPLORE) * p_topic * p_emit;
    if (!s->prev_item)
        return p;
    const uint32_t *sc = m->item[s->prev_item].succ;
    uint32_t n = sc[2] ? 3 : sc[1] ? 2 : 1;
    double p_succ = 0;
    for (uint32_t j = 0; j < n; j++)
        p_succ += sc[j] == item ? SUCC_W[n][j] : 0.0;
    return cfg->transition_prob * p_succ + (1 - cfg->transition_prob) * p;
}

/* ---- configuration ---- */

synth_config synth_default_config(void)
{
    synth_config c;
    memset(&c, 0, sizeof c);
    c.n_users = 6000;
    c.n_items = 2000;
    c.n_cates = 50;
    c.n_topics = 30;
    c.mean_len = 30;
    c.min_len = 5;
    c.max_len = 400;
    c.zipf_exponent = 0.6;
    c.stickiness = 0.6;
    c.transition_prob = 0.15;
    c.drift = 0.01;
    c.seed = 1;
    c.threads = 0;
    c.protocol = protocol_default_opts(); /* Amazon-like: min_user_len 4, max_history 50 */
    return c;
}

static int prob_ok(double p) { return p >= 0.0 && p <= 1.0; }

int synth_validate_config(const synth_config *c, gp_err *e)
{
    if (!c)
        return gp_fail(e, "synth: no config");
    if (c->n_users < 1 || c->n_users > (uint64_t)UINT32_MAX + 1)
        return gp_fail(e, "synth: n_users must be in [1, 2^32], got %llu", (unsigned long long)c->n_users);
    if (c->n_items < 2 || c->n_items >= UINT32_MAX)
        return gp_fail(e, "synth: n_items must be in [2, 2^32 - 2] (a negative needs another item), got %llu",
                       (unsigned long long)c->n_items);
    if (c->n_cates < 1 || c->n_cates >= UINT32_MAX)
        return gp_fail(e, "synth: n_cates must be >= 1, got %u", c->n_cates);
    if (c->n_topics < 1 || c->n_topics > c->n_items)
        return gp_fail(e, "synth: n_topics must be in [1, n_items = %llu], got %u", (unsigned long long)c->n_items,
                       c->n_topics);
    if (c->min_len < 1 || c->max_len < c->min_len)
        return gp_fail(e, "synth: need 1 <= min_len <= max_len, got min_len %u max_len %u", c->min_len, c->max_len);
    if (!(c->mean_len >= c->min_len && c->mean_len <= c->max_len))
        return gp_fail(e, "synth: mean_len must be in [min_len %u, max_len %u], got %g", c->min_len, c->max_len,
                       c->mean_len);
    /* Beyond 4 the weight of the 2^32-th item would underflow a float to zero. */
    if (!(c->zipf_exponent >= 0 && c->zipf_exponent <= 4))
        return gp_fail(e, "synth: zipf_exponent must be in [0, 4], got %g", c->zipf_exponent);
    if (!prob_ok(c->stickiness))
        return gp_fail(e, "synth: stickiness must be in [0, 1], got %g", c->stickiness);
    if (!prob_ok(c->transition_prob))
        return gp_fail(e, "synth: transition_prob must be in [0, 1], got %g", c->transition_prob);
    if (!prob_ok(c->drift))
        return gp_fail(e, "synth: drift must be in [0, 1], got %g", c->drift);
    if (c->threads < 0)
        return gp_fail(e, "synth: threads must be >= 0 (0 = all cores), got %d", c->threads);
    if (protocol_validate_opts(&c->protocol, e) != 0)
        return gp_wrap(e, "synth");
    return 0;
}

/* ---- the world ---- */

static double std_normal_cdf(double x) { return 0.5 * erfc(-x / sqrt(2.0)); }

/* Mean of a lognormal(mu, s) clipped to [a, b]. */
static double clipped_lognormal_mean(double mu, double s, double a, double b)
{
    double la = log(a), lb = log(b);
    double below = std_normal_cdf((la - mu) / s), above = 1 - std_normal_cdf((lb - mu) / s);
    double inside = exp(mu + s * s / 2) * (std_normal_cdf((lb - mu - s * s) / s) - std_normal_cdf((la - mu - s * s) / s));
    return a * below + b * above + inside;
}

static void solve_lengths(synth_model *m)
{
    const synth_config *c = &m->cfg;
    m->len_mu = NAN;
    if (c->min_len == c->max_len || c->mean_len <= c->min_len || c->mean_len >= c->max_len) {
        m->len_const = c->mean_len <= c->min_len ? c->min_len : c->max_len;
        return;
    }
    double lo = log(c->min_len) - 30, hi = log(c->max_len) + 30;
    for (int it = 0; it < 200; it++) {
        double mid = 0.5 * (lo + hi);
        if (clipped_lognormal_mean(mid, LEN_SIGMA, c->min_len, c->max_len) < c->mean_len)
            lo = mid;
        else
            hi = mid;
    }
    m->len_mu = 0.5 * (lo + hi);
}

void synth_model_free(synth_model *m)
{
    if (!m)
        return;
    gp_free_aligned(m->item_w);
    gp_free_aligned(m->item_topic);
    gp_free_aligned(m->item);
    gp_free_aligned(m->item_group);
    gp_free_aligned(m->seg);
    gp_free_aligned(m->slot);
    gp_free_aligned(m->emit);
    gp_free_aligned(m->gpop_prob);
    gp_free_aligned(m->gpop_alias);
    gp_free_aligned(m->neighbor);
    gp_free_aligned(m->tpop_prob);
    gp_free_aligned(m->tpop_alias);
    free(m);
}

static int threads_of(const synth_config *c) { return c->threads > 0 ? c->threads : omp_get_max_threads(); }

/* Model arrays are read at random on every step: with 4 KiB pages a table of a few million
 * items costs a page walk per access, so large ones ask for transparent huge pages (where the
 * kernel honours madvise; elsewhere this is a plain aligned allocation). Zeroed; free with free(). */
static void *alloc_random_access(uint64_t bytes, const char *what, gp_err *e)
{
    const uint64_t huge = 2u << 20;
    if (bytes < 2 * huge)
        return gp_alloc_or_fail(bytes, what, e);
    void *p = NULL;
    uint64_t rounded = (bytes + huge - 1) / huge * huge;
    if (posix_memalign(&p, huge, rounded) != 0) {
        char buf[32];
        gp_fail(e, "out of memory allocating %s for %s", gp_fmt_bytes((double)bytes, buf, sizeof buf), what);
        return NULL;
    }
    madvise(p, rounded, MADV_HUGEPAGE);
    memset(p, 0, rounded);
    return p;
}

/* Allocates every array of the model; 0 or -1 with a message. */
static int model_alloc(synth_model *m, gp_err *e)
{
    const uint64_t N = m->n_items, V = N + 1, T = m->n_topics, S = T * N_GROUPS, TE = T * (N_EPOCHS + 1);
    struct {
        void **p;
        uint64_t bytes;
        const char *what;
    } a[] = {
        {(void **)&m->item_w, V * sizeof *m->item_w, "item weights"},
        {(void **)&m->item_topic, V * sizeof *m->item_topic, "item topics"},
        {(void **)&m->item, V * sizeof *m->item, "item categories and successors"},
        {(void **)&m->item_group, V * sizeof *m->item_group, "item birth groups"},
        {(void **)&m->seg, (S + 1) * sizeof *m->seg, "segments"},
        {(void **)&m->slot, N * sizeof *m->slot, "alias tables"},
        {(void **)&m->emit, TE * sizeof *m->emit, "emission ranges"},
        {(void **)&m->gpop_prob, TE * sizeof *m->gpop_prob, "topic alias tables"},
        {(void **)&m->gpop_alias, TE * sizeof *m->gpop_alias, "topic alias tables"},
        {(void **)&m->neighbor, T * N_NEIGHBORS * sizeof *m->neighbor, "topic neighbours"},
        {(void **)&m->tpop_prob, T * sizeof *m->tpop_prob, "topic alias tables"},
        {(void **)&m->tpop_alias, T * sizeof *m->tpop_alias, "topic alias tables"},
    };
    for (size_t i = 0; i < sizeof a / sizeof a[0]; i++) {
        char what[64];
        snprintf(what, sizeof what, "synth: %s", a[i].what);
        if (!(*a[i].p = alloc_random_access(a[i].bytes, what, e)))
            return -1;
    }
    return 0;
}

int synth_model_build(const synth_config *cfg, synth_model **out, gp_err *e)
{
    *out = NULL;
    if (synth_validate_config(cfg, e) != 0)
        return -1;
    synth_model *m = gp_xcalloc(1, sizeof *m);
    m->cfg = *cfg;
    const uint64_t N = cfg->n_items;
    const uint32_t T = cfg->n_topics, C = cfg->n_cates;
    const uint64_t S = (uint64_t)T * N_GROUPS;
    const int nt = threads_of(cfg);
    const uint64_t seed = cfg->seed;
    m->n_items = N;
    m->n_topics = T;
    m->n_cates = C;
    solve_lengths(m);
    if (model_alloc(m, e) != 0) {
        synth_model_free(m);
        return -1;
    }

    /* Topics: size and popularity laws; categories: size law. */
    uint32_t TC = T > C ? T : C;
    double *w = gp_xmalloc(TC * sizeof *w), *scaled = gp_xmalloc(TC * sizeof *scaled);
    uint32_t *scratch = gp_xmalloc(TC * sizeof *scratch);
    float *size_prob = gp_xmalloc(T * sizeof *size_prob), *cate_prob = gp_xmalloc(C * sizeof *cate_prob);
    uint32_t *size_alias = gp_xmalloc(T * sizeof *size_alias), *cate_alias = gp_xmalloc(C * sizeof *cate_alias);
    gp_rng r = gp_rng_stream(seed, RNG_PURPOSE_SYNTH, SUB_TOPIC_RANK, 0);
    powerlaw_weights(w, T, TOPIC_SIZE_EXPONENT, &r);
    alias_build(w, T, size_prob, size_alias, scratch, scaled);
    powerlaw_weights(w, T, TOPIC_POP_EXPONENT, &r);
    alias_build(w, T, m->tpop_prob, m->tpop_alias, scratch, scaled);
    r = gp_rng_stream(seed, RNG_PURPOSE_SYNTH, SUB_CATE_RANK, 0);
    powerlaw_weights(w, C, CATE_SIZE_EXPONENT, &r);
    alias_build(w, C, cate_prob, cate_alias, scratch, scaled);

    uint32_t *primary = gp_xmalloc(2 * (uint64_t)T * sizeof *primary);
    for (uint32_t c = 0; c < T; c++) {
        gp_rng rc = gp_rng_stream(seed, RNG_PURPOSE_SYNTH, SUB_TOPIC, c);
        primary[2 * c] = 1 + alias_draw(cate_prob, cate_alias, C, &rc);
        primary[2 * c + 1] = 1 + alias_draw(cate_prob, cate_alias, C, &rc);
        for (int j = 0; j < N_NEIGHBORS; j++) {
            uint32_t nb = c;
            for (int tries = 0; tries < 16 && nb == c && T > 1; tries++)
                nb = topic_by_popularity(m, &rc);
            m->neighbor[(uint64_t)c * N_NEIGHBORS + j] = nb;
        }
    }

    /* Items: topic (the first T items one per topic, so none is empty), category, birth group. */
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t i = 1; i <= (int64_t)N; i++) {
        gp_rng ri = gp_rng_stream(seed, RNG_PURPOSE_SYNTH, SUB_ITEM_A, (uint64_t)i);
        uint32_t c = (uint64_t)i <= T ? (uint32_t)(i - 1) : alias_draw(size_prob, size_alias, T, &ri);
        m->item_topic[i] = c;
        double u = uni(&ri);
        m->item[i].cate = u < CATE_PRIMARY ? primary[2 * c]
                          : u < CATE_PRIMARY + CATE_SECONDARY ? primary[2 * c + 1]
                                                              : 1 + alias_draw(cate_prob, cate_alias, C, &ri);
        m->item_group[i] = (uint8_t)gp_rng_below(&ri, N_GROUPS);
    }
    free(primary);
    free(size_prob);
    free(size_alias);
    free(cate_prob);
    free(cate_alias);
    free(w);
    free(scaled);
    free(scratch);

    /* Popularity: one global permutation of ranks (serial Fisher-Yates), then the weights. */
    {
        uint32_t *rank = gp_alloc_or_fail(N * sizeof *rank, "synth: popularity ranks", e);
        if (!rank) {
            synth_model_free(m);
            return -1;
        }
        for (uint64_t i = 0; i < N; i++)
            rank[i] = (uint32_t)i;
        gp_rng rr = gp_rng_stream(seed, RNG_PURPOSE_SYNTH, SUB_ITEM_RANK, 0);
        for (uint64_t i = N; i > 1; i--) {
            uint64_t j = gp_rng_below64(&rr, i);
            uint32_t t = rank[i - 1];
            rank[i - 1] = rank[j];
            rank[j] = t;
        }
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int64_t i = 1; i <= (int64_t)N; i++)
            m->item_w[i] = (float)pow((double)rank[i - 1] + 1.0, -cfg->zipf_exponent);
        gp_free_aligned(rank);
    }

    /* Segments (topic, birth group) by counting sort; id order inside a segment. */
    for (uint64_t i = 1; i <= N; i++)
        m->seg[(uint64_t)m->item_topic[i] * N_GROUPS + m->item_group[i] + 1].start++;
    for (uint64_t k = 0; k < S; k++)
        m->seg[k + 1].start += m->seg[k].start;
    {
        uint64_t *fill = gp_xmalloc(S * sizeof *fill);
        for (uint64_t k = 0; k < S; k++)
            fill[k] = m->seg[k].start;
        for (uint64_t i = 1; i <= N; i++)
            m->slot[fill[(uint64_t)m->item_topic[i] * N_GROUPS + m->item_group[i]]++].item = (uint32_t)i;
        free(fill);
    }
    uint64_t max_size = 1;
    for (uint64_t k = 0; k < S; k++)
        max_size = GP_MAX(max_size, m->seg[k + 1].start - m->seg[k].start);

    /* Per-segment alias tables by popularity. */
#pragma omp parallel num_threads(nt)
    {
        double *tw = gp_xmalloc(max_size * sizeof *tw), *ts = gp_xmalloc(max_size * sizeof *ts);
        uint32_t *tscr = gp_xmalloc(max_size * sizeof *tscr), *talias = gp_xmalloc(max_size * sizeof *talias);
        float *tprob = gp_xmalloc(max_size * sizeof *tprob);
#pragma omp for schedule(dynamic, 64)
        for (int64_t k = 0; k < (int64_t)S; k++) {
            uint64_t start = m->seg[k].start;
            uint32_t n = (uint32_t)(m->seg[k + 1].start - start);
            alias_slot *sl = &m->slot[start];
            double mass = 0;
            for (uint32_t j = 0; j < n; j++) {
                tw[j] = m->item_w[sl[j].item];
                mass += tw[j];
            }
            m->seg[k].mass = mass;
            alias_build(tw, n, tprob, talias, tscr, ts);
            for (uint32_t j = 0; j < n; j++) {
                sl[j].prob = tprob[j];
                sl[j].alias = sl[talias[j]].item;
            }
        }
        free(tw);
        free(ts);
        free(tscr);
        free(talias);
        free(tprob);
    }

    /* Emission ranges per (topic, epoch), and the global topic tables per epoch. */
    {
        double *alive = gp_xcalloc((uint64_t)T * (N_EPOCHS + 1), sizeof *alive);
        for (uint32_t c = 0; c < T; c++) {
            const segment *sg = &m->seg[(uint64_t)c * N_GROUPS];
            double all = 0;
            for (uint32_t g = 0; g < N_GROUPS; g++)
                all += sg[g].mass;
            for (uint32_t ep = 0; ep <= N_EPOCHS; ep++) {
                uint64_t idx = (uint64_t)c * (N_EPOCHS + 1) + ep;
                uint32_t lo = ep == ALL_TIME ? 0 : ep, hi = ep == ALL_TIME ? N_GROUPS : ep + LIFETIME;
                double mass = 0;
                for (uint32_t g = lo; g < hi; g++)
                    mass += sg[g].mass;
                alive[idx] = mass;
                if (mass <= 0) { /* nothing alive: the topic falls back to all of its items */
                    lo = 0, hi = N_GROUPS, mass = all;
                }
                m->emit[idx].lo = (uint8_t)lo;
                m->emit[idx].hi = (uint8_t)hi;
                m->emit[idx].mass = mass;
            }
        }
        double *tw = gp_xmalloc((uint64_t)T * sizeof *tw), *ts = gp_xmalloc((uint64_t)T * sizeof *ts);
        uint32_t *tscr = gp_xmalloc((uint64_t)T * sizeof *tscr);
        for (uint32_t ep = 0; ep <= N_EPOCHS; ep++) {
            double total = 0;
            for (uint32_t c = 0; c < T; c++) {
                tw[c] = alive[(uint64_t)c * (N_EPOCHS + 1) + ep];
                total += tw[c];
            }
            m->pop_total[ep] = total;
            m->pop_epoch[ep] = total > 0 ? ep : ALL_TIME;
            alias_build(tw, T, m->gpop_prob + (uint64_t)ep * T, m->gpop_alias + (uint64_t)ep * T, tscr, ts);
        }
        free(tw);
        free(ts);
        free(tscr);
        free(alive);
    }

    /* Successors: 1-3 per item, half from its own topic, half from anywhere, by all-time popularity. */
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t i = 1; i <= (int64_t)N; i++) {
        gp_rng ri = gp_rng_stream(seed, RNG_PURPOSE_SYNTH, SUB_ITEM_B, (uint64_t)i);
        uint32_t n = 1 + gp_rng_below(&ri, MAX_SUCC);
        uint32_t *sc = m->item[i].succ;
        for (uint32_t j = 0; j < n; j++)
            sc[j] = uni(&ri) < 0.5 ? item_in_topic(m, m->item_topic[i], ALL_TIME, &ri)
                                   : item_by_popularity(m, ALL_TIME, &ri);
    }
    *out = m;
    return 0;
}

/* ---- the dataset ---- */

void synth_output_free(synth_output *o)
{
    if (!o)
        return;
    gp_free_aligned(o->item_cate);
    gp_free_aligned(o->tok_item);
    gp_free_aligned(o->tok_cate);
    gp_free_aligned(o->user_offset);
    gp_free_aligned(o->user_len);
    gp_free_aligned(o->user_last_time);
    free(o->records);
    gp_free_aligned(o->test_oracle);
    memset(o, 0, sizeof *o);
}

/* Open-addressing counter of (previous item, candidate) pairs: only the pairs the test samples
 * ask about are counted, so memory is O(test samples) whatever the data size. */
typedef struct {
    uint64_t *key; /* prev << 32 | cand, UINT64_MAX = empty */
    uint64_t *count;
    uint64_t mask;
} pair_counter;

static uint64_t pair_slot(const pair_counter *pc, uint64_t key)
{
    uint64_t h = gp_mix64(key) & pc->mask;
    while (pc->key[h] != key && pc->key[h] != UINT64_MAX)
        h = (h + 1) & pc->mask;
    return h;
}

/* The state a model could infer from a history if it had learnt the item -> topic map: the
 * most frequent topics of the history as interests, the last item's topic as the current one,
 * and the epoch in which most of the last 10 items are alive. */
static void infer_state(const synth_model *m, const uint32_t *hist, uint32_t n, synth_state *s)
{
    uint32_t topic[64], count[64], n_topics = 0;
    memset(s, 0, sizeof *s);
    uint32_t from = n > 64 ? n - 64 : 0;
    for (uint32_t k = from; k < n; k++) {
        uint32_t c = m->item_topic[hist[k]], j = 0;
        while (j < n_topics && topic[j] != c)
            j++;
        if (j == n_topics) {
            topic[n_topics] = c;
            count[n_topics++] = 0;
        }
        count[j]++;
    }
    for (uint32_t k = 0; k < SYNTH_MAX_INTERESTS && k < n_topics; k++) {
        uint32_t best = k; /* selection of the k-th most frequent (first seen wins ties) */
        for (uint32_t j = k + 1; j < n_topics; j++)
            if (count[j] > count[best])
                best = j;
        uint32_t tc = topic[k], cc = count[k];
        topic[k] = topic[best], count[k] = count[best];
        topic[best] = tc, count[best] = cc;
        s->interest[k] = topic[k];
        s->weight[k] = count[k];
        s->n_interests++;
    }
    double sum = 0;
    for (uint32_t k = 0; k < s->n_interests; k++)
        sum += s->weight[k];
    for (uint32_t k = 0; k < s->n_interests; k++)
        s->weight[k] /= sum;
    s->prev_item = hist[n - 1];
    s->topic = m->item_topic[s->prev_item];
    uint32_t best_e = 0, best_alive = 0;
    for (uint32_t e = 0; e < N_EPOCHS; e++) {
        uint32_t alive = 0;
        for (uint32_t k = n > 10 ? n - 10 : 0; k < n; k++) {
            uint32_t g = m->item_group[hist[k]];
            alive += g >= e && g < e + LIFETIME;
        }
        if (alive >= best_alive)
            best_alive = alive, best_e = e;
    }
    s->epoch = best_e;
}

/* The report's scores over the TEST records: oracle, inferred state, history baseline, popularity. */
static int evaluate(const synth_model *m, synth_output *o, const synth_state *last_state, synth_report *rep, int nt,
                    gp_err *e)
{
    const synth_config *cfg = &m->cfg;
    const uint64_t N = m->n_items, n_users = cfg->n_users;
    const ds_record *test = o->records + o->test_begin;
    const uint64_t n_test = o->n_test;
    rep->n_test_samples = n_test;
    rep->ceiling_auc = rep->ceiling_logloss = rep->inferred_auc = rep->history_auc = rep->popularity_auc = NAN;
    o->test_oracle = gp_alloc_or_fail((n_test ? n_test : 1) * sizeof *o->test_oracle, "synth: oracle scores", e);
    if (!o->test_oracle)
        return -1;
    if (n_test == 0)
        return 0;

    /* Users whose last interaction is held out (TEST and VALID targets). */
    uint8_t *held = gp_xcalloc(n_users, 1);
    for (uint64_t i = o->test_begin; i < o->contents.n_records; i++)
        held[o->records[i].user] = 1;

    /* Groups of records per test user. */
    uint64_t n_groups = 0;
    uint64_t *group = gp_xmalloc((n_test + 1) * sizeof *group);
    for (uint64_t i = 0; i < n_test; i++)
        if (i == 0 || test[i].user != test[i - 1].user)
            group[n_groups++] = i;
    group[n_groups] = n_test;

    /* Oracle: each test user's state just before its last interaction, kept by the generator. */
    float *inferred = gp_xmalloc(n_test * sizeof *inferred);
#pragma omp parallel for num_threads(nt) schedule(dynamic, 64)
    for (int64_t g = 0; g < (int64_t)n_groups; g++) {
        const synth_state *s = &last_state[test[group[g]].user];
        synth_state guess;
        infer_state(m, o->tok_item + test[group[g]].offset, test[group[g]].hist_len, &guess);
        for (uint64_t i = group[g]; i < group[g + 1]; i++) {
            o->test_oracle[i] = (float)synth_oracle_prob(m, s, test[i].item);
            inferred[i] = (float)synth_oracle_prob(m, &guess, test[i].item);
        }
    }

    /* Counts over every interaction except the held-out targets. Transition pairs are counted
     * only for the (previous item, candidate) pairs the test samples ask about. */
    uint64_t *item_count = gp_xcalloc(N + 1, sizeof *item_count), *out_count = gp_xcalloc(N + 1, sizeof *out_count);
    uint64_t *is_prev = gp_xcalloc(N / 64 + 1, sizeof *is_prev); /* bitmap of the queried previous items */
    pair_counter pc;
    uint64_t cap = 16;
    while (cap < 2 * n_test)
        cap *= 2;
    pc.mask = cap - 1;
    pc.key = gp_xmalloc(cap * sizeof *pc.key);
    pc.count = gp_xcalloc(cap, sizeof *pc.count);
    memset(pc.key, 0xff, cap * sizeof *pc.key);
    for (uint64_t i = 0; i < n_test; i++) {
        uint64_t prev = o->tok_item[test[i].offset + test[i].hist_len - 1];
        uint64_t key = prev << 32 | test[i].item;
        pc.key[pair_slot(&pc, key)] = key;
        is_prev[prev / 64] |= 1ull << (prev % 64);
    }
    /* Serial: a plain increment beats an atomic one on a few cores. */
    for (uint64_t u = 0; u < n_users; u++) {
        const uint32_t *t = o->tok_item + o->user_offset[u];
        uint32_t n = o->user_len[u] - held[u];
        for (uint32_t k = 0; k < n; k++)
            item_count[t[k]]++;
    }
#pragma omp parallel for num_threads(nt) schedule(dynamic, 256)
    for (int64_t u = 0; u < (int64_t)n_users; u++) {
        uint64_t off = o->user_offset[u];
        uint32_t n = o->user_len[u] - held[u];
        for (uint32_t k = 1; k < n; k++) {
            uint32_t it = o->tok_item[off + k], prev = o->tok_item[off + k - 1];
            if (!(is_prev[prev / 64] >> (prev % 64) & 1))
                continue;
            uint64_t key = (uint64_t)prev << 32 | it;
            uint64_t h = pair_slot(&pc, key);
            if (pc.key[h] == key) {
#pragma omp atomic
                pc.count[h]++;
            }
        }
    }
    /* An item is followed as often as it occurs, except where it ends a user's counted span. */
    memcpy(out_count, item_count, (N + 1) * sizeof *out_count);
    for (uint64_t u = 0; u < n_users; u++) {
        uint32_t n = o->user_len[u] - held[u];
        if (n)
            out_count[o->tok_item[o->user_offset[u] + n - 1]]--;
    }
    uint64_t total = 0;
    uint64_t *cate_count = gp_xcalloc((uint64_t)m->n_cates + 1, sizeof *cate_count);
    for (uint64_t i = 1; i <= N; i++) {
        total += item_count[i];
        cate_count[m->item[i].cate] += item_count[i];
    }

    float *hist_score = gp_xmalloc(n_test * sizeof *hist_score), *pop_score = gp_xmalloc(n_test * sizeof *pop_score);
    float *posterior = gp_xmalloc(n_test * sizeof *posterior);
    int32_t *label = gp_xmalloc(n_test * sizeof *label);
    const double q_scale = (double)cfg->protocol.n_negatives / (double)(N - 1);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t i = 0; i < (int64_t)n_test; i++) {
        const ds_record *r = &test[i];
        uint32_t cand = r->item, cate = m->item[cand].cate;
        uint32_t prev = o->tok_item[r->offset + r->hist_len - 1];
        uint64_t key = (uint64_t)prev << 32 | cand;
        double p_tr = out_count[prev] ? (double)pc.count[pair_slot(&pc, key)] / (double)out_count[prev] : 0.0;
        uint32_t k = GP_MIN(r->hist_len, 20u), same = 0;
        for (uint32_t j = r->hist_len - k; j < r->hist_len; j++)
            same += o->tok_cate[r->offset + j] == cate;
        double p_in_cate = cate_count[cate] ? (double)item_count[cand] / (double)cate_count[cate] : 0.0;
        double p_pop = total ? (double)item_count[cand] / (double)total : 0.0;
        hist_score[i] = (float)(0.4 * p_tr + 0.4 * ((double)same / k) * p_in_cate + 0.2 * p_pop);
        pop_score[i] = (float)item_count[cand];
        double p = o->test_oracle[i];
        /* P(click | candidate) when the positive is drawn with p and each negative uniformly
         * among the other items, i.e. with (1 - p) / (N - 1). */
        posterior[i] = (float)(p / (p + q_scale * (1 - p)));
        label[i] = r->label;
    }
    rep->ceiling_auc = metrics_auc(o->test_oracle, label, n_test);
    rep->ceiling_logloss = metrics_logloss(posterior, label, n_test);
    rep->history_auc = metrics_auc(hist_score, label, n_test);
    rep->inferred_auc = metrics_auc(inferred, label, n_test);
    rep->popularity_auc = metrics_auc(pop_score, label, n_test);

    free(hist_score);
    free(inferred);
    free(pop_score);
    free(posterior);
    free(label);
    free(cate_count);
    free(pc.key);
    free(pc.count);
    free(is_prev);
    free(item_count);
    free(out_count);
    free(held);
    free(group);
    return 0;
}

int synth_build(const synth_config *cfg, synth_output *out, synth_report *report, gp_err *e)
{
    double t0 = gp_now();
    memset(out, 0, sizeof *out);
    synth_report rep;
    memset(&rep, 0, sizeof rep);
    synth_model *m = NULL;
    synth_state *last_state = NULL; /* each user's state before its last interaction, for the oracle */
    if (synth_model_build(cfg, &m, e) != 0)
        return -1;
    const int nt = threads_of(cfg);
    const uint64_t n_users = cfg->n_users, N = cfg->n_items;

    out->item_cate = gp_alloc_or_fail((N + 1) * sizeof *out->item_cate, "synth: item categories", e);
    out->user_offset = out->item_cate ? gp_alloc_or_fail(n_users * sizeof *out->user_offset, "synth: user offsets", e) : NULL;
    out->user_len = out->user_offset ? gp_alloc_or_fail(n_users * sizeof *out->user_len, "synth: user lengths", e) : NULL;
    out->user_last_time =
        out->user_len ? gp_alloc_or_fail(n_users * sizeof *out->user_last_time, "synth: user last times", e) : NULL;
    if (!out->user_last_time)
        goto fail;
    out->item_cate[0] = 0;
    for (uint64_t i = 1; i <= N; i++)
        out->item_cate[i] = m->item[i].cate;

#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t u = 0; u < (int64_t)n_users; u++)
        out->user_len[u] = synth_user_len(m, (uint64_t)u);
    uint64_t n_tokens = 0;
    for (uint64_t u = 0; u < n_users; u++) {
        out->user_offset[u] = n_tokens;
        n_tokens += out->user_len[u];
    }
    out->tok_item = gp_alloc_or_fail(n_tokens * sizeof *out->tok_item, "synth: item tokens", e);
    out->tok_cate = out->tok_item ? gp_alloc_or_fail(n_tokens * sizeof *out->tok_cate, "synth: category tokens", e) : NULL;
    last_state = out->tok_cate ? gp_alloc_or_fail(n_users * sizeof *last_state, "synth: users' last states", e) : NULL;
    if (!last_state)
        goto fail;

#pragma omp parallel for num_threads(nt) schedule(dynamic, 256)
    for (int64_t u = 0; u < (int64_t)n_users; u++) {
        uint64_t off = out->user_offset[u];
        uint32_t n = out->user_len[u];
        out->user_last_time[u] =
            user_generate(m, (uint64_t)u, n, out->tok_item + off, out->tok_cate + off, NULL, &last_state[u]);
    }
    rep.n_interactions = n_tokens;

    protocol_input in = {n_tokens, out->tok_item, out->tok_cate, n_users, out->user_offset, out->user_len,
                         out->user_last_time, N + 1, out->item_cate};
    protocol_opts po = cfg->protocol;
    po.seed = cfg->seed;
    po.threads = nt;
    uint64_t n_records = 0;
    if (protocol_build(&in, &po, &out->records, &n_records, &rep.protocol, e) != 0) {
        gp_wrap(e, "synth");
        goto fail;
    }
    out->test_begin = rep.protocol.records[DS_SPLIT_PRETRAIN] + rep.protocol.records[DS_SPLIT_TRAIN];
    out->n_test = rep.protocol.records[DS_SPLIT_TEST];

    ds_contents *c = &out->contents;
    c->n_items = N + 1;
    c->n_cates = (uint64_t)cfg->n_cates + 1;
    c->n_users = n_users;
    c->n_tokens = n_tokens;
    c->n_records = n_records;
    c->item_cate = out->item_cate;
    c->tok_item = out->tok_item;
    c->tok_cate = out->tok_cate;
    c->records = out->records;
    c->max_history = cfg->protocol.max_history;
    c->seed = cfg->seed;
    c->producer = "gpsdrec synth";
    if (evaluate(m, out, last_state, &rep, nt, e) != 0)
        goto fail;
    /* The trainer reads ceiling_auc back from here (train.c) to print it beside the test AUC. */
    snprintf(out->description, sizeof out->description,
             "gpsdrec synthetic data; ceiling_auc=%.4f inferred_auc=%.4f history_auc=%.4f popularity_auc=%.4f",
             rep.ceiling_auc, rep.inferred_auc, rep.history_auc, rep.popularity_auc);
    c->description = out->description;
    gp_free_aligned(last_state);
    synth_model_free(m);
    rep.seconds = gp_now() - t0;
    if (report)
        *report = rep;
    return 0;
fail:
    gp_free_aligned(last_state);
    synth_model_free(m);
    synth_output_free(out);
    return -1;
}

int synth_generate(const synth_config *cfg, const char *out_path, synth_report *report, gp_err *e)
{
    if (!out_path || !*out_path)
        return gp_fail(e, "synth: no output path");
    synth_output o;
    synth_report rep;
    if (synth_build(cfg, &o, &rep, e) != 0)
        return -1;
    double t0 = gp_now();
    int rc = dataset_write(out_path, &o.contents, e);
    rep.write_seconds = gp_now() - t0;
    synth_output_free(&o);
    if (rc != 0)
        return gp_wrap(e, "synth");
    if (report)
        *report = rep;
    return 0;
}

void synth_print_report(const synth_config *cfg, const synth_report *r, FILE *f)
{
    const protocol_stats *p = &r->protocol;
    fprintf(f, "synth: %llu users, %llu items, %u categories, %u topics, seed %llu\n", (unsigned long long)cfg->n_users,
            (unsigned long long)cfg->n_items, cfg->n_cates, cfg->n_topics, (unsigned long long)cfg->seed);
    fprintf(f, "  %llu interactions (mean %.1f per user) generated in %.2f s (%.2f M interactions/s)",
            (unsigned long long)r->n_interactions, cfg->n_users ? (double)r->n_interactions / (double)cfg->n_users : 0.0,
            r->seconds, r->seconds > 0 ? (double)r->n_interactions / r->seconds / 1e6 : 0.0);
    if (r->write_seconds > 0)
        fprintf(f, ", written in %.2f s", r->write_seconds);
    fputc('\n', f);
    fprintf(f, "  users: %llu kept, %llu too short (< %u), %llu test, %llu valid, %llu without pretraining sequence\n",
            (unsigned long long)p->users_kept, (unsigned long long)p->users_too_short, cfg->protocol.min_user_len,
            (unsigned long long)p->users_test, (unsigned long long)p->users_valid, (unsigned long long)p->users_no_pretrain);
    fprintf(f, "  split time %lld; records: pretrain %llu, train %llu, test %llu, valid %llu\n", (long long)p->split_time,
            (unsigned long long)p->records[DS_SPLIT_PRETRAIN], (unsigned long long)p->records[DS_SPLIT_TRAIN],
            (unsigned long long)p->records[DS_SPLIT_TEST], (unsigned long long)p->records[DS_SPLIT_VALID]);
    fprintf(f, "  test AUC: ceiling %.4f (logloss %.4f), inferred state %.4f, history baseline %.4f, popularity %.4f, "
               "random 0.5\n",
            r->ceiling_auc, r->ceiling_logloss, r->inferred_auc, r->history_auc, r->popularity_auc);
    fprintf(f, "  (ceiling: the generator's own probabilities given each user's true latent state, the best any model\n"
               "   can expect; history baseline: item-transition, recent-category and popularity counts, no latent\n"
               "   state; a model that learns the structure lands between the two)\n");
}
