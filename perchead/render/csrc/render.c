/* CPU kernels of perchead.render: tile binning, front-to-back compositing and EWA projection, forwards
   and hand-written backwards mirroring gsplat's CUDA ones.

   This is the one translation unit: rasterize.h and project.h are written once over REAL / SFX and
   included twice below through instantiate.h, for float (`_f32` symbols) and double (`_f64`); the float
   compositor runs on vector lanes of pixels (simd.h, raster_simd.h: four, or eight where the CPU has
   AVX2, chosen at run time), the double one a pixel at a time. perchead/render/_native.py compiles it with
   the system C compiler at first use (-O3 -std=c99, OpenMP when available; no -march: the library
   stays portable) and calls the exported functions through ctypes. TS, the tile side, comes from
   TILE_SIZE in Python (-DTS=16). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#define PARALLEL(n) _Pragma("omp parallel num_threads(nthreads)")  /* n must be `nthreads` */
#define THREAD_ID omp_get_thread_num()
#define THREAD_COUNT omp_get_num_threads()
#else
#define PARALLEL(n)
#define THREAD_ID 0
#define THREAD_COUNT 1
#endif

/* The work units a thread of a parallel region takes: from a shared counter (`threads` 0: whichever
   thread is free, the fastest), or its own share of a fixed deal (where each thread sums into its own
   gradient buffer: the sums then do not depend on the threads' timing, so a backward pass gives the same
   bits on every run with the same thread count). The deal goes through `sched` in order and gives each
   tile to the thread with the least work so far (its tiles' list lengths plus a fixed cost per tile);
   every thread replays it and keeps its own tiles. */
typedef struct {
    int64_t *shared;          /* the counter (dynamic) */
    int threads, tid;         /* the deal: thread count (0: dynamic) and this thread */
    int64_t next, total;      /* next position in sched; its length */
    const int64_t *sched, *offsets;
    int64_t *load;            /* [threads] work dealt so far */
} WorkQueue;

static inline int64_t take_unit(WorkQueue *q) {
    if (q->threads == 0) return __atomic_fetch_add(q->shared, 1, __ATOMIC_RELAXED);
    while (q->next < q->total) {
        int64_t u = q->next++, t = q->sched[u];
        int best = 0;
        for (int k = 1; k < q->threads; ++k)
            if (q->load[k] < q->load[best]) best = k;
        q->load[best] += q->offsets[t + 1] - q->offsets[t] + 16;
        if (best == q->tid) return u;
    }
    return q->total;
}

/* Writes each tile's list (ids, Gaussian indices front to back) from bin_count's outputs: per image, the
   Gaussians in depth order are appended to the lists of the tiles their rectangle covers. */
void bin_fill(int I, int N, int tw, int th, const int32_t *rects, const int32_t *order, const int32_t *nvalid,
              const int64_t *offsets, int32_t *ids, int nthreads) {
    int64_t nt = (int64_t)tw * th;
    PARALLEL(nthreads)
    {
        int64_t *cur = (int64_t *)malloc((size_t)(nt > 0 ? nt : 1) * sizeof(int64_t));
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (int img = 0; img < I; ++img) {
            memcpy(cur, offsets + img * nt, (size_t)nt * sizeof(int64_t));
            for (int k = 0; k < nvalid[img]; ++k) {
                int32_t n = order[(int64_t)img * N + k];
                const int32_t *r = rects + 4 * ((int64_t)img * N + n);
                for (int y = r[1]; y < r[3]; ++y)
                    for (int x = r[0]; x < r[2]; ++x) ids[cur[(int64_t)y * tw + x]++] = n;
            }
        }
        free(cur);
    }
}

/* The order in which the compositors take tiles: when `by_length`, longest list first (by the length's
   bit count, an approximation of longest-processing-time-first: no long tile starts last), else in order.
   Returns a malloc'ed array of the `total` tile indices. */
static int64_t *tile_schedule(const int64_t *offsets, int64_t total, int by_length) {
    int64_t *sched = (int64_t *)malloc((size_t)(total > 0 ? total : 1) * sizeof(int64_t)), start[66] = {0};
    if (!by_length) {
        for (int64_t t = 0; t < total; ++t) sched[t] = t;
        return sched;
    }
    unsigned char *bits = (unsigned char *)malloc((size_t)(total > 0 ? total : 1));
    for (int64_t t = 0; t < total; ++t) {
        int b = 0;
        for (int64_t L = offsets[t + 1] - offsets[t]; L > 0; L >>= 1) ++b;
        bits[t] = (unsigned char)(64 - b);  /* 64 - bit length: longest first */
        start[bits[t] + 1]++;
    }
    for (int b = 0; b < 65; ++b) start[b + 1] += start[b];
    for (int64_t t = 0; t < total; ++t) sched[start[bits[t]]++] = t;
    free(bits);
    return sched;
}

#if defined(__GNUC__) || defined(__clang__)
#include "simd.h"
#define RASTER_VEC 1 /* the float compositor runs on lanes of pixels */
#else
#define RASTER_VEC 0
#define SIMD_AVX2 0
#endif

/* The float compositor's lane count: 8 when asked for and the CPU has AVX2, else 4. */
static int simd_lanes(int requested) {
#if SIMD_AVX2
    if (requested == 8 && __builtin_cpu_supports("avx2")) return 8;
#endif
    (void)requested;
    return 4;
}

#ifndef TS
#define TS 16 /* perchead.render TILE_SIZE; the loader passes -DTS */
#endif

#define REAL float
#define SFX(name) name##_f32
#define EXP expf
#define LOG logf
#define SQRT sqrtf
#include "instantiate.h"

#undef RASTER_VEC
#define RASTER_VEC 0 /* double: one pixel at a time */
#define REAL double
#define SFX(name) name##_f64
#define EXP exp
#define LOG log
#define SQRT sqrt
#include "instantiate.h"
