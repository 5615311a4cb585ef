/* Tile binning and the tile compositor, forward and backward, written over REAL and SFX(name): included
   once per precision by render.c (not a standalone file). One work item is one TS x TS tile of one image. */

#define NREC 16
#define NPIX (TS * TS)
#define PREFETCH 4 /* list entries ahead whose record and colours are prefetched */
#define SPAN_MIN 4 /* row segments longer than this many pixels are cut to the ellipse's span */
/* Per call, every Gaussian's per-image constants are computed once into a record (rec_prepare): its
   alpha threshold, the pixel rows and columns its ellipse can touch and the constants of each row's span,
   so the tile loops only intersect integer ranges. The spans are supersets of the pixels whose sigma is
   below the threshold (widened by a margin beyond the float test's rounding); the per-pixel test alone
   decides, so forward and backward make the same decisions whatever the span. */
/* record fields: x, y, conic a, b, c, opacity, sigma threshold (-1: never visible), b / a, 2 thr / a,
   det / a^2, span margin, first and last pixel row, first and last pixel column, 1 if the conic is
   degenerate (whole bounding range, no span) */
#ifndef REC_FIELDS
#define REC_FIELDS /* once for both precisions */
enum { R_X, R_Y, R_A, R_B, R_C, R_O, R_THR, R_BA, R_P, R_Q, R_MARGIN, R_Y0, R_Y1, R_X0, R_X1, R_FULL };
/* the backward's gradient record of a Gaussian: mean x, y, conic a, b, c, opacity, then its D colours */
enum { G_X, G_Y, G_A, G_B, G_C, G_O, G_COL };
#endif

/* floor and ceil of v clamped to [lo, hi] (integers), by truncation: no libm call without SSE4.1 */
static inline double SFX(floor_in)(double v, double lo, double hi) {
    v = v > lo ? (v < hi ? v : hi) : lo;
    double t = (double)(int64_t)v;
    return t - (v < t);
}
static inline double SFX(ceil_in)(double v, double lo, double hi) {
    v = v > lo ? (v < hi ? v : hi) : lo;
    double t = (double)(int64_t)v;
    return t + (v > t);
}

/* One Gaussian's record (`m`, `c`, `o` point at its x, its conic and its opacity). */
static void SFX(rec_one)(REAL *p, const REAL *m, const REAL *c, const REAL *o, int W, int H) {
    double a = c[0], b = c[1], cc = c[2], det = a * cc - b * b, x = m[0], y = m[1];
    REAL thr = *o * 255.0 > 1.0 ? LOG(*o * (REAL)255) + (REAL)1e-3 : -1;  /* sigma where alpha < 1/255 */
    p[R_X] = m[0]; p[R_Y] = m[1]; p[R_A] = c[0]; p[R_B] = c[1]; p[R_C] = c[2]; p[R_O] = *o;
    p[R_THR] = thr;
    p[R_BA] = p[R_P] = p[R_Q] = p[R_MARGIN] = 0;
    p[R_FULL] = 1;
    p[R_Y0] = -1; p[R_Y1] = (REAL)H; p[R_X0] = -1; p[R_X1] = (REAL)W;
    if (thr < 0) { p[R_Y0] = 1; p[R_Y1] = 0; return; }  /* empty */
    if (!(a > 0) || !(det > 0) || !isfinite(x) || !isfinite(y) || !isfinite(a * cc)) return;
    double t2 = 2.0 * (double)thr, ia = 1 / a, idet = 1 / det;
    double ey = sqrt(t2 * a * idet), ex = sqrt(t2 * cc * idet);
    /* a pixel's centre (X + 0.5, Y + 0.5) can have sigma <= thr only within ex, ey of the mean; e widens
       that far beyond the rounding of the float sigma test */
    double e = 0.01 + 1e-4 * (ex + ey) + 1e-6 * (fabs(x) + fabs(y));
    p[R_Y0] = (REAL)SFX(ceil_in)(y - ey - 0.5 - e, -1, H);
    p[R_Y1] = (REAL)SFX(floor_in)(y + ey - 0.5 + e, -1, H);
    p[R_X0] = (REAL)SFX(ceil_in)(x - ex - 0.5 - e, -1, W);
    p[R_X1] = (REAL)SFX(floor_in)(x + ex - 0.5 + e, -1, W);
    p[R_FULL] = 0;
    p[R_BA] = (REAL)(b * ia);
    p[R_P] = (REAL)(t2 * ia);
    p[R_Q] = (REAL)(det * ia * ia);
    /* the span's half-width sqrt(P - Q dy^2) in REAL is off by at most ~5e-4 sqrt(P) near the tips */
    p[R_MARGIN] = (REAL)(1e-3 * sqrt(t2 * ia) + e);
    if (!isfinite(p[R_BA]) || !isfinite(p[R_P]) || !isfinite(p[R_Q]) || !isfinite(p[R_MARGIN])) p[R_FULL] = 1;
}

/* Records of all I x N Gaussians (inside a parallel region: the loop is shared by the team). */
static void SFX(rec_prepare)(int64_t IN, const REAL *m, const REAL *c, const REAL *o, int W, int H, REAL *rec) {
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
    for (int64_t g = 0; g < IN; ++g) SFX(rec_one)(rec + g * NREC, m + 2 * g, c + 3 * g, o + g, W, H);
}

/* Local rows [*r0, *r1] of the tile at (x0, y0) that the record's ellipse can touch. */
static inline int SFX(rec_rows)(const REAL *p, int y0, int th_, int *r0, int *r1) {
    int lo = (int)p[R_Y0] - y0, hi = (int)p[R_Y1] - y0;
    *r0 = lo < 0 ? 0 : lo;
    *r1 = hi > th_ - 1 ? th_ - 1 : hi;
    return *r0 <= *r1;
}

/* Local columns [*c0, *c1] of local row r: the bounding range, cut to the ellipse's span (widened
   against rounding) when long. */
static inline int SFX(rec_span)(const REAL *p, int x0, int y0, int tw_, int r, int *c0, int *c1) {
    int lo = (int)p[R_X0] - x0, hi = (int)p[R_X1] - x0;
    lo = lo < 0 ? 0 : lo;
    hi = hi > tw_ - 1 ? tw_ - 1 : hi;
    if (hi - lo >= SPAN_MIN && p[R_FULL] == 0) {
        REAL dy = p[R_Y] - ((REAL)(y0 + r) + (REAL)0.5);
        REAL s2 = p[R_P] - p[R_Q] * dy * dy;
        REAL s = (s2 > 0 ? SQRT(s2) : 0) + p[R_MARGIN];
        REAL ctr = p[R_X] + p[R_BA] * dy - (REAL)0.5 - (REAL)x0;  /* local column of the span's centre */
        REAL pmin = ctr - s, pmax = ctr + s;
        /* ceil and floor by truncation of values kept in [-2, TS + 2] (columns 0 .. TS - 1 are all that matter) */
        pmin = pmin > -2 ? (pmin < TS + 2 ? pmin : TS + 2) : -2;  /* NaN: the whole range */
        pmax = pmax < TS + 2 ? (pmax > -2 ? pmax : -2) : TS + 2;
        int slo = 32 - (int)(32 - pmin), shi = (int)(pmax + 32) - 32;
        if (slo > lo) lo = slo;
        if (shi < hi) hi = shi;
    }
    *c0 = lo;
    *c1 = hi;
    return lo <= hi;
}

/* Per image (in parallel): the tile rectangle of every Gaussian with both radii > 0, as tile_rects in
   _torch_impl.py, written to rects [I, N, 4]; those Gaussians in stable depth order, written to
   order [I, N] (the first nvalid[i] entries of row i); and every tile's list length, as offsets[1 + tile],
   then summed into the offsets of the lists ([I * tw * th + 1]). bin_fill writes the lists. */
void SFX(bin_count)(int I, int N, int tw, int th, const REAL *means2d, const int32_t *radii, const REAL *depths,
                    int32_t *rects, int32_t *order, int32_t *nvalid, int64_t *offsets, int nthreads) {
    int64_t nt = (int64_t)tw * th;
    offsets[0] = 0;
    PARALLEL(nthreads)
    {
        uint64_t *key = (uint64_t *)malloc((size_t)2 * (N > 0 ? N : 1) * sizeof(uint64_t));
        int32_t *tmp = (int32_t *)malloc((size_t)(N > 0 ? N : 1) * sizeof(int32_t));
        size_t hist[256];
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (int img = 0; img < I; ++img) {
            int64_t *cnt = offsets + 1 + img * nt;
            int32_t *ord = order + (int64_t)img * N;
            uint64_t *k0 = key, *k1 = key + N, diff = 0;
            memset(cnt, 0, (size_t)nt * sizeof(int64_t));
            int n = 0;
            for (int i = 0; i < N; ++i) {
                int64_t gi = (int64_t)img * N + i;
                const int32_t *rad = radii + 2 * gi;
                if (!(rad[0] > 0 && rad[1] > 0)) continue;
                REAL mx = means2d[2 * gi], my = means2d[2 * gi + 1], rx = (REAL)rad[0], ry = (REAL)rad[1];
                REAL v[4] = {(mx - rx) / (REAL)TS, (my - ry) / (REAL)TS, (mx + rx) / (REAL)TS, (my + ry) / (REAL)TS};
                int32_t *rc = rects + 4 * gi;
                for (int e = 0; e < 4; ++e) {
                    /* floor (e < 2) or ceil, clamped to [0, tiles], from the truncation of a value clamped to
                       [-1, tiles + 1] (exact, unlike a shifted truncation) */
                    int hi = e % 2 ? th : tw;
                    REAL x = v[e] > -1 ? (v[e] < (REAL)(hi + 1) ? v[e] : (REAL)(hi + 1)) : -1;  /* NaN: -1 */
                    int t = (int)x, f = e < 2 ? t - (x < (REAL)t) : t + (x > (REAL)t);
                    rc[e] = f < 0 ? 0 : (f > hi ? hi : f);
                }
                for (int y = rc[1]; y < rc[3]; ++y)
                    for (int x = rc[0]; x < rc[2]; ++x) cnt[(int64_t)y * tw + x]++;
                double d = (double)depths[gi];
                uint64_t u;
                memcpy(&u, &d, sizeof u);
                u = (u >> 63) ? ~u : (u | ((uint64_t)1 << 63));  /* order of the doubles as unsigned */
                k0[n] = u;
                ord[n] = i;
                diff |= u ^ k0[0];
                ++n;
            }
            nvalid[img] = n;
            /* stable LSD radix sort of (key, index) by bytes, skipping bytes that all keys share */
            for (int shift = 0; shift < 64; shift += 8) {
                if (!((diff >> shift) & 0xff)) continue;
                memset(hist, 0, sizeof hist);
                for (int i = 0; i < n; ++i) hist[(k0[i] >> shift) & 0xff]++;
                size_t sum = 0;
                for (int b = 0; b < 256; ++b) { size_t h = hist[b]; hist[b] = sum; sum += h; }
                for (int i = 0; i < n; ++i) {
                    size_t dst = hist[(k0[i] >> shift) & 0xff]++;
                    k1[dst] = k0[i];
                    tmp[dst] = ord[i];
                }
                uint64_t *kt = k0; k0 = k1; k1 = kt;
                memcpy(ord, tmp, (size_t)n * sizeof(int32_t));
            }
        }
        free(tmp);
        free(key);
    }
    for (int64_t t = 0; t < (int64_t)I * nt; ++t) offsets[t + 1] += offsets[t];
}

/* Forward of one tile with D colour channels (D is a constant where the caller specialises it). */
static inline __attribute__((always_inline)) void SFX(fwd_tile)(
        int64_t img, int64_t gt, int N, int D, int W, int H, int tw, int th, const int64_t *offsets,
        const int32_t *ids, const REAL *rec, const REAL *colors, const REAL *bg, REAL *out, REAL *out_T,
        int32_t *last, REAL *acc) {
    int64_t nt = (int64_t)tw * th, HW = (int64_t)H * W, t = gt % nt;
    REAL T[NPIX];
    int32_t lastj[NPIX];
    unsigned char done[NPIX];
    int x0 = (int)(t % tw) * TS, y0 = (int)(t / tw) * TS;
    int tw_ = W - x0 < TS ? W - x0 : TS, th_ = H - y0 < TS ? H - y0 : TS;
    int64_t s = offsets[gt], L = offsets[gt + 1] - s;
    const int32_t *tid = ids + s;
    for (int k = 0; k < NPIX; ++k) { T[k] = 1; lastj[k] = -1; done[k] = 0; }
    memset(acc, 0, (size_t)NPIX * D * sizeof(REAL));
    int remaining = tw_ * th_, row_left[TS];
    for (int r = 0; r < TS; ++r) row_left[r] = tw_;
    for (int64_t j = 0; j < L && remaining > 0; ++j) {
        if (j + PREFETCH < L) {  /* the lists are in depth order, not memory order: fetch ahead */
            int64_t gn = img * N + tid[j + PREFETCH];
            __builtin_prefetch(rec + gn * NREC);
            __builtin_prefetch(colors + gn * D);
        }
        int64_t g = img * N + tid[j];
        const REAL *p = rec + g * NREC;
        int r0, r1, c0, c1;
        if (!SFX(rec_rows)(p, y0, th_, &r0, &r1)) continue;
        const REAL *col = colors + g * D;
        REAL px = p[R_X], py = p[R_Y], pa = p[R_A], pb = p[R_B], pc = p[R_C], po = p[R_O], thr = p[R_THR];
        for (int r = r0; r <= r1; ++r) {
            if (row_left[r] == 0 || !SFX(rec_span)(p, x0, y0, tw_, r, &c0, &c1)) continue;
            REAL dy = py - ((REAL)(y0 + r) + (REAL)0.5);
            REAL cdy = pc * dy * dy;
            for (int cc = c0; cc <= c1; ++cc) {
                int k = r * TS + cc;
                if (done[k]) continue;
                REAL dx = px - ((REAL)(x0 + cc) + (REAL)0.5);
                REAL sigma = (REAL)0.5 * (pa * dx * dx + cdy) + pb * dx * dy;
                if (sigma < 0 || sigma > thr) continue;
                REAL alpha = po * EXP(-sigma);
                if (alpha > (REAL)0.999) alpha = (REAL)0.999;
                if (alpha < (REAL)(1.0 / 255.0)) continue;
                REAL next_T = T[k] * (1 - alpha);
                if (next_T <= (REAL)1e-4) { done[k] = 1; --remaining; --row_left[r]; continue; }
                REAL vis = alpha * T[k];
                REAL *ak = acc + (int64_t)k * D;
                for (int d = 0; d < D; ++d) ak[d] += col[d] * vis;
                T[k] = next_T;
                lastj[k] = (int32_t)j;
            }
        }
    }
    const REAL *bgi = bg ? bg + img * D : NULL;
    for (int r = 0; r < th_; ++r) {
        for (int cc = 0; cc < tw_; ++cc) {
            int k = r * TS + cc;
            int64_t pix = (int64_t)(y0 + r) * W + x0 + cc;
            for (int d = 0; d < D; ++d)
                out[(img * D + d) * HW + pix] = acc[(int64_t)k * D + d] + (bgi ? T[k] * bgi[d] : 0);
            out_T[img * HW + pix] = T[k];
            last[img * HW + pix] = lastj[k];
        }
    }
}


#if RASTER_VEC
#define VN(name) name##_v4
#define VW 4
#define VF v4f
#define VI v4i
#define VSPLAT v4f_splat
#define VISPLAT v4i_splat
#define VAND v4f_and
#define VSEL v4f_sel
#define VISEL v4i_sel
#define VBITS v4_bits
#define VEXP v4f_exp
#define VSUM v4f_sum
#define VATTR
#include "raster_simd.h" /* undefines the parameters above */
#if SIMD_AVX2
#define VN(name) name##_v8
#define VW 8
#define VF v8f
#define VI v8i
#define VSPLAT v8f_splat
#define VISPLAT v8i_splat
#define VAND v8f_and
#define VSEL v8f_sel
#define VISEL v8i_sel
#define VBITS v8_bits
#define VEXP v8f_exp
#define VSUM v8f_sum
#define VATTR AVX2_ATTR
#include "raster_simd.h" /* undefines the parameters above */
#endif
#endif

static void SFX(rasterize_fwd_body)(int I, int N, int D, int W, int H, int tw, int th,
        const int64_t *offsets, const int32_t *ids,
        const REAL *means2d, const REAL *conics, const REAL *opac, const REAL *colors, const REAL *bg,
        REAL *out, REAL *out_T, int32_t *last, REAL *rec, const int64_t *sched, int64_t *counter, int lanes) {
    SFX(rec_prepare)((int64_t)I * N, means2d, conics, opac, W, H, rec);  /* ends with a barrier */
#if RASTER_VEC
#if SIMD_AVX2
    if (lanes == 8) {
        fwd_tiles_v8(I, N, D, W, H, tw, th, offsets, ids, rec, colors, bg, out, out_T, last, sched, counter);
        return;
    }
#endif
    (void)lanes;
    fwd_tiles_v4(I, N, D, W, H, tw, th, offsets, ids, rec, colors, bg, out, out_T, last, sched, counter);
#else
    (void)lanes;
    int64_t nt = (int64_t)tw * th, total = (int64_t)I * nt;
    REAL *acc = (REAL *)malloc((size_t)NPIX * (D > 0 ? D : 1) * sizeof(REAL));
    for (;;) {
        int64_t u = __atomic_fetch_add(counter, 1, __ATOMIC_RELAXED);
        if (u >= total) break;
        int64_t gt = sched[u], img = gt / nt;
        if (D == 3)  /* the colours alone: a constant channel count */
            SFX(fwd_tile)(img, gt, N, 3, W, H, tw, th, offsets, ids, rec, colors, bg, out, out_T, last, acc);
        else
            SFX(fwd_tile)(img, gt, N, D, W, H, tw, th, offsets, ids, rec, colors, bg, out, out_T, last, acc);
    }
    free(acc);
#endif
}

/* rec: [I, N, NREC] scratch, filled here and passed on to the backward. lanes: 8 for eight-pixel lanes
   where the CPU has AVX2, else four (float; double runs one pixel at a time). */
void SFX(rasterize_fwd)(int I, int N, int D, int W, int H, int tw, int th,
        const int64_t *offsets, const int32_t *ids,
        const REAL *means2d, const REAL *conics, const REAL *opac, const REAL *colors, const REAL *bg,
        REAL *out, REAL *out_T, int32_t *last, REAL *rec, int lanes, int nthreads) {
    int64_t counter = 0, total = (int64_t)I * tw * th;
    int64_t *sched = tile_schedule(offsets, total, 1);
    PARALLEL(nthreads)
    SFX(rasterize_fwd_body)(I, N, D, W, H, tw, th, offsets, ids, means2d, conics, opac, colors, bg, out, out_T,
                            last, rec, sched, &counter, simd_lanes(lanes));
    free(sched);
}

/* Backward of one tile, back to front from each pixel's last contributor as gsplat's CUDA backward,
   Gaussian by Gaussian; gradients are added to v_* (this thread's slice). */
static inline __attribute__((always_inline)) void SFX(bwd_tile)(
        int64_t img, int64_t gt, int N, int D, int W, int H, int tw, int th,
        const int64_t *offsets, const int32_t *ids, const REAL *rec, const REAL *colors, const REAL *bg,
        const REAL *out_T, const int32_t *last, const REAL *v_out, const REAL *v_alpha, REAL *grad, int gs,
        REAL *buffer, REAL *vc, REAL *gcol) {
    int64_t nt = (int64_t)tw * th, HW = (int64_t)H * W, t = gt % nt;
    REAL T[NPIX], Tf[NPIX], va[NPIX], bgdot[NPIX];
    int32_t lastj[NPIX], rowmax[TS];
    int x0 = (int)(t % tw) * TS, y0 = (int)(t / tw) * TS;
    int tw_ = W - x0 < TS ? W - x0 : TS, th_ = H - y0 < TS ? H - y0 : TS;
    int64_t s = offsets[gt], L = offsets[gt + 1] - s;
    if (L == 0) return;
    const int32_t *tid = ids + s;
    const REAL *bgi = bg ? bg + img * D : NULL;
    int32_t jmax = -1;
    for (int k = 0; k < NPIX; ++k) lastj[k] = -1;
    for (int r = 0; r < TS; ++r) rowmax[r] = -1;
    for (int r = 0; r < th_; ++r) {
        for (int cc = 0; cc < tw_; ++cc) {
            int k = r * TS + cc;
            int64_t pix = img * HW + (int64_t)(y0 + r) * W + x0 + cc;
            lastj[k] = last[pix];
            if (lastj[k] > rowmax[r]) rowmax[r] = lastj[k];
            T[k] = Tf[k] = out_T[pix];
            va[k] = v_alpha ? v_alpha[pix] : 0;
            bgdot[k] = 0;
            for (int d = 0; d < D; ++d) {
                buffer[(int64_t)k * D + d] = 0;
                vc[(int64_t)k * D + d] = v_out[(img * D + d) * HW + (pix - img * HW)];
                if (bgi) bgdot[k] += bgi[d] * vc[(int64_t)k * D + d];
            }
        }
        if (rowmax[r] > jmax) jmax = rowmax[r];
    }
    for (int64_t j = jmax; j >= 0; --j) {
        if (j >= PREFETCH) {
            int64_t gn = img * N + tid[j - PREFETCH];
            __builtin_prefetch(rec + gn * NREC);
            __builtin_prefetch(colors + gn * D);
            __builtin_prefetch(grad + gn * gs, 1);
        }
        int64_t g = img * N + tid[j];
        const REAL *p = rec + g * NREC;
        int r0, r1, c0, c1;
        if (!SFX(rec_rows)(p, y0, th_, &r0, &r1)) continue;
        const REAL *col = colors + g * D;
        REAL px = p[R_X], py = p[R_Y], pa = p[R_A], pb = p[R_B], pc = p[R_C], po = p[R_O], thr = p[R_THR];
        REAL gxy0 = 0, gxy1 = 0, gc0 = 0, gc1 = 0, gc2 = 0, gop = 0;
        int touched = 0;
        for (int d = 0; d < D; ++d) gcol[d] = 0;
        for (int r = r0; r <= r1; ++r) {
            if (rowmax[r] < j || !SFX(rec_span)(p, x0, y0, tw_, r, &c0, &c1)) continue;
            REAL dy = py - ((REAL)(y0 + r) + (REAL)0.5);
            REAL cdy = pc * dy * dy;
            for (int cc = c0; cc <= c1; ++cc) {
                int k = r * TS + cc;
                if (lastj[k] < j) continue;
                REAL dx = px - ((REAL)(x0 + cc) + (REAL)0.5);
                REAL sigma = (REAL)0.5 * (pa * dx * dx + cdy) + pb * dx * dy;
                if (sigma < 0 || sigma > thr) continue;
                REAL vis = EXP(-sigma);
                REAL alpha = po * vis;
                if (alpha > (REAL)0.999) alpha = (REAL)0.999;
                if (alpha < (REAL)(1.0 / 255.0)) continue;
                touched = 1;
                REAL ra = 1 / (1 - alpha);
                T[k] *= ra;
                REAL fac = alpha * T[k], v_a = 0;
                REAL *bk = buffer + (int64_t)k * D;
                const REAL *vk = vc + (int64_t)k * D;
                for (int d = 0; d < D; ++d) {
                    gcol[d] += fac * vk[d];
                    v_a += (col[d] * T[k] - bk[d] * ra) * vk[d];
                    bk[d] += col[d] * fac;
                }
                v_a += Tf[k] * ra * (va[k] - bgdot[k]);
                if (po * vis <= (REAL)0.999) {
                    REAL v_sigma = -po * vis * v_a;
                    gc0 += (REAL)0.5 * v_sigma * dx * dx;
                    gc1 += v_sigma * dx * dy;
                    gc2 += (REAL)0.5 * v_sigma * dy * dy;
                    gxy0 += v_sigma * (pa * dx + pb * dy);
                    gxy1 += v_sigma * (pb * dx + pc * dy);
                    gop += vis * v_a;
                }
            }
        }
        if (!touched) continue;
        REAL *gr = grad + g * gs;
        gr[G_X] += gxy0; gr[G_Y] += gxy1; gr[G_A] += gc0; gr[G_B] += gc1; gr[G_C] += gc2; gr[G_O] += gop;
        for (int d = 0; d < D; ++d) gr[G_COL + d] += gcol[d];
    }
}

/* A work unit is `unit` consecutive tiles; gradients go to this thread's buffers (shared when units are
   whole images, which never share gradient slots). */
static void SFX(rasterize_bwd_body)(int I, int N, int D, int W, int H, int tw, int th,
        const int64_t *offsets, const int32_t *ids, const REAL *rec, const REAL *colors, const REAL *bg,
        const REAL *out_T, const int32_t *last, const REAL *v_out, const REAL *v_alpha, REAL *grad, int gs,
        const int64_t *sched, WorkQueue *queue, int64_t unit, int lanes) {
#if RASTER_VEC
#if SIMD_AVX2
    if (lanes == 8) {
        bwd_tiles_v8(I, N, D, W, H, tw, th, offsets, ids, rec, colors, bg, out_T, last, v_out, v_alpha, grad, gs,
                     sched, queue, unit);
        return;
    }
#endif
    (void)lanes;
    bwd_tiles_v4(I, N, D, W, H, tw, th, offsets, ids, rec, colors, bg, out_T, last, v_out, v_alpha, grad, gs,
                 sched, queue, unit);
#else
    (void)lanes;
    int64_t nt = (int64_t)tw * th, total = (int64_t)I * nt;
    int Dm = D > 0 ? D : 1;
    REAL *buffer = (REAL *)malloc((size_t)NPIX * Dm * sizeof(REAL));
    REAL *vc = (REAL *)malloc((size_t)NPIX * Dm * sizeof(REAL));
    REAL *gcol = (REAL *)malloc((size_t)Dm * sizeof(REAL));
    for (;;) {
        int64_t u = take_unit(queue);
        if (u * unit >= total) break;
        for (int64_t i = u * unit; i < (u + 1) * unit && i < total; ++i) {
            int64_t gt = sched[i], img = gt / nt;
            if (D == 3)
                SFX(bwd_tile)(img, gt, N, 3, W, H, tw, th, offsets, ids, rec, colors, bg, out_T, last, v_out,
                              v_alpha, grad, gs, buffer, vc, gcol);
            else
                SFX(bwd_tile)(img, gt, N, D, W, H, tw, th, offsets, ids, rec, colors, bg, out_T, last, v_out,
                              v_alpha, grad, gs, buffer, vc, gcol);
        }
    }
    free(gcol); free(vc); free(buffer);
#endif
}

/* per_thread: thread t accumulates into slice t of grad [nthreads, I * N, gs], else all share slice 0
   (work units are whole images then, which never share gradient slots). grad is scratch (zeroed here); its
   slices' sum goes to v_means2d [I, N, 2], v_conics [I, N, 3], v_opac [I, N] and v_colors [I, N, D]. */
void SFX(rasterize_bwd)(int I, int N, int D, int W, int H, int tw, int th,
        const int64_t *offsets, const int32_t *ids, const REAL *rec, const REAL *colors, const REAL *bg,
        const REAL *out_T, const int32_t *last, const REAL *v_out, const REAL *v_alpha, REAL *grad, int gs,
        REAL *v_means2d, REAL *v_conics, REAL *v_opac, REAL *v_colors, int per_thread, int lanes, int nthreads) {
    int64_t counter = 0, unit = per_thread ? 1 : (int64_t)tw * th, IN = (int64_t)I * N;
    int64_t *sched = tile_schedule(offsets, (int64_t)I * tw * th, per_thread);
    int nbuf = per_thread ? nthreads : 1;
    PARALLEL(nthreads)
    {
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int64_t c = 0; c < nbuf * IN; c += 1024)
            memset(grad + c * gs, 0, (size_t)((c + 1024 < nbuf * IN ? 1024 : nbuf * IN - c) * gs) * sizeof(REAL));
        int64_t k = per_thread ? THREAD_ID : 0;
        /* per-thread buffers: a fixed deal of the tiles (fixed sums); one shared buffer: whole images as
           threads come free (no two share a gradient slot) */
        int nt_ = per_thread ? THREAD_COUNT : 0;
        int64_t *load = (int64_t *)calloc((size_t)(nt_ > 0 ? nt_ : 1), sizeof(int64_t));
        WorkQueue queue = {&counter, nt_, (int)k, 0, (int64_t)I * tw * th, sched, offsets, load};
        SFX(rasterize_bwd_body)(I, N, D, W, H, tw, th, offsets, ids, rec, colors, bg, out_T, last, v_out, v_alpha,
                                grad + k * IN * gs, gs, sched, &queue, unit, simd_lanes(lanes));
        free(load);
#ifdef _OPENMP
#pragma omp barrier
#pragma omp for schedule(static)
#endif
        for (int64_t g = 0; g < IN; ++g) {
            REAL *gr = grad + g * gs;
            for (int b = 1; b < nbuf; ++b) {
                const REAL *o = grad + (b * IN + g) * gs;
                for (int e = 0; e < G_COL + D; ++e) gr[e] += o[e];
            }
            v_means2d[2 * g] = gr[G_X]; v_means2d[2 * g + 1] = gr[G_Y];
            v_conics[3 * g] = gr[G_A]; v_conics[3 * g + 1] = gr[G_B]; v_conics[3 * g + 2] = gr[G_C];
            v_opac[g] = gr[G_O];
            for (int d = 0; d < D; ++d) v_colors[g * D + d] = gr[G_COL + d];
        }
    }
    free(sched);
}
