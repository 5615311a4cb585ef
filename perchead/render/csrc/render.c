/* CPU kernels of perchead.render: tile binning, front-to-back compositing and EWA projection, forwards
   and hand-written backwards mirroring gsplat's CUDA ones.

   This is the one translation unit: rasterize.h and project.h are written once over REAL / SFX and
   included twice below through instantiate.h, for float (`_f32` symbols) and double (`_f64`). perchead/render/_native.py
   compiles it with the system C compiler at first use (-O3 -std=c99, OpenMP when available) and calls
   the exported functions through ctypes. TS, the tile side, comes from TILE_SIZE in Python (-DTS=16). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#define PARALLEL(n) _Pragma("omp parallel num_threads(nthreads)")  /* n must be `nthreads` */
#define THREAD_ID omp_get_thread_num()
#else
#define PARALLEL(n)
#define THREAD_ID 0
#endif

/* Counting sort of (image, tile) lists; Gaussians arrive in depth order so each list is sorted. */
void bin_tiles(int I, int N, int tw, int th, const int32_t *rects, const int64_t *order,
               int64_t *offsets, int32_t *ids) {
    int64_t nt = (int64_t)tw * th, total = (int64_t)I * nt;
    memset(offsets, 0, (total + 1) * sizeof(int64_t));
    for (int64_t i = 0; i < (int64_t)I * N; ++i) {
        const int32_t *r = rects + 4 * i;
        int64_t base = (i / N) * nt;
        for (int y = r[1]; y < r[3]; ++y)
            for (int x = r[0]; x < r[2]; ++x) offsets[base + (int64_t)y * tw + x + 1]++;
    }
    for (int64_t t = 0; t < total; ++t) offsets[t + 1] += offsets[t];
    int64_t *cur = (int64_t *)malloc((total + 1) * sizeof(int64_t));
    memcpy(cur, offsets, (total + 1) * sizeof(int64_t));
    for (int img = 0; img < I; ++img) {
        for (int k = 0; k < N; ++k) {
            int64_t n = order[(int64_t)img * N + k];
            const int32_t *r = rects + 4 * ((int64_t)img * N + n);
            for (int y = r[1]; y < r[3]; ++y)
                for (int x = r[0]; x < r[2]; ++x) ids[cur[img * nt + (int64_t)y * tw + x]++] = (int32_t)n;
        }
    }
    free(cur);
}

#ifndef TS
#define TS 16 /* perchead.render TILE_SIZE; the loader passes -DTS */
#endif

#define REAL float
#define SFX(name) name##_f32
#define EXP expf
#define SQRT sqrtf
#include "instantiate.h"

#define REAL double
#define SFX(name) name##_f64
#define EXP exp
#define SQRT sqrt
#include "instantiate.h"
