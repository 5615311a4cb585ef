/* Tile compositor, forward and backward, written over REAL and SFX(name): included once per precision by
   render.c (not a standalone file). One work item is one TS x TS tile of one image. */

#define NPACK 7
#define NPIX (TS * TS)
/* packs x, y, conic a, b, c, opacity and the sigma above which alpha < 1/255 (-1: never visible) */
static void SFX(pack)(REAL **buf, int64_t *cap, int64_t L, const int32_t *ids, int64_t base,
                      const REAL *m, const REAL *c, const REAL *o) {
    if (L > *cap) { free(*buf); *cap = L * 2; *buf = (REAL *)malloc(*cap * NPACK * sizeof(REAL)); }
    REAL *p = *buf;
    for (int64_t j = 0; j < L; ++j, p += NPACK) {
        int64_t g = base + ids[j];
        p[0] = m[2 * g]; p[1] = m[2 * g + 1];
        p[2] = c[3 * g]; p[3] = c[3 * g + 1]; p[4] = c[3 * g + 2];
        p[5] = o[g];
        p[6] = o[g] * 255.0 > 1.0 ? (REAL)(log((double)o[g] * 255.0) + 1e-3) : (REAL)-1.0;
    }
}

/* Rows [*r0, *r1] of the tile (local coordinates) that the ellipse sigma <= thr can touch. */
static int SFX(rows)(const REAL *p, int x0, int y0, int tw_, int th_, int *r0, int *r1) {
    double a = p[2], b = p[3], c = p[4], thr = p[6], det = a * c - b * b;
    if (thr < 0) return 0;
    if (!(a > 0) || !(det > 0)) { *r0 = 0; *r1 = th_ - 1; return 1; }
    double ext = sqrt(2.0 * thr * a / det);
    int lo = (int)ceil(p[1] - ext - 0.5) - 1 - y0, hi = (int)floor(p[1] + ext - 0.5) + 1 - y0;
    *r0 = lo < 0 ? 0 : lo;
    *r1 = hi > th_ - 1 ? th_ - 1 : hi;
    return *r0 <= *r1;
}

/* Columns [*c0, *c1] of local row `r` inside the ellipse (widened by one pixel against rounding). */
static int SFX(span)(const REAL *p, int x0, int y0, int tw_, int r, int *c0, int *c1) {
    double a = p[2], b = p[3], c = p[4], thr = p[6];
    if (!(a > 0) || !(a * c - b * b > 0)) { *c0 = 0; *c1 = tw_ - 1; return 1; }
    double dy = p[1] - (y0 + r + 0.5);
    double disc = b * b * dy * dy - a * c * dy * dy + 2.0 * a * thr;
    if (disc < 0) disc = 0;  /* the widened row range may graze the ellipse: keep a 1-pixel span */
    double s = sqrt(disc);
    /* dx = mean_x - px lies in [(-b dy - s) / a, (-b dy + s) / a]; px = centre - 0.5 */
    double pmin = p[0] - (-b * dy + s) / a - 0.5, pmax = p[0] - (-b * dy - s) / a - 0.5;
    int lo = (int)ceil(pmin) - 1 - x0, hi = (int)floor(pmax) + 1 - x0;
    *c0 = lo < 0 ? 0 : lo;
    *c1 = hi > tw_ - 1 ? tw_ - 1 : hi;
    return *c0 <= *c1;
}

static void SFX(rasterize_fwd_body)(int I, int N, int D, int W, int H, int tw, int th,
        const int64_t *offsets, const int32_t *ids,
        const REAL *means2d, const REAL *conics, const REAL *opac, const REAL *colors, const REAL *bg,
        REAL *out, REAL *out_T, int32_t *last, int64_t *counter) {
    int64_t nt = (int64_t)tw * th, total = (int64_t)I * nt, HW = (int64_t)H * W, cap = 0;
    REAL *buf = NULL, T[NPIX];
    int32_t lastj[NPIX];
    unsigned char done[NPIX];
    REAL *acc = (REAL *)malloc((size_t)NPIX * (D > 0 ? D : 1) * sizeof(REAL));
    for (;;) {
        int64_t gt = __atomic_fetch_add(counter, 1, __ATOMIC_RELAXED);
        if (gt >= total) break;
        int64_t img = gt / nt, t = gt % nt;
        int x0 = (int)(t % tw) * TS, y0 = (int)(t / tw) * TS;
        int tw_ = W - x0 < TS ? W - x0 : TS, th_ = H - y0 < TS ? H - y0 : TS;
        int64_t s = offsets[gt], L = offsets[gt + 1] - s;
        const int32_t *tid = ids + s;
        SFX(pack)(&buf, &cap, L, tid, img * N, means2d, conics, opac);
        for (int k = 0; k < NPIX; ++k) { T[k] = 1; lastj[k] = -1; done[k] = 0; }
        memset(acc, 0, (size_t)NPIX * D * sizeof(REAL));
        int remaining = tw_ * th_, row_left[TS];
        for (int r = 0; r < TS; ++r) row_left[r] = tw_;
        const REAL *p = buf;
        for (int64_t j = 0; j < L && remaining > 0; ++j, p += NPACK) {
            int r0, r1, c0, c1;
            if (!SFX(rows)(p, x0, y0, tw_, th_, &r0, &r1)) continue;
            const REAL *col = colors + (img * N + tid[j]) * D;
            for (int r = r0; r <= r1; ++r) {
                if (row_left[r] == 0 || !SFX(span)(p, x0, y0, tw_, r, &c0, &c1)) continue;
                REAL dy = p[1] - ((REAL)(y0 + r) + (REAL)0.5);
                for (int cc = c0; cc <= c1; ++cc) {
                    int k = r * TS + cc;
                    if (done[k]) continue;
                    REAL dx = p[0] - ((REAL)(x0 + cc) + (REAL)0.5);
                    REAL sigma = (REAL)0.5 * (p[2] * dx * dx + p[4] * dy * dy) + p[3] * dx * dy;
                    if (sigma < 0 || sigma > p[6]) continue;
                    REAL alpha = p[5] * EXP(-sigma);
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
    free(acc);
    free(buf);
}

void SFX(rasterize_fwd)(int I, int N, int D, int W, int H, int tw, int th,
        const int64_t *offsets, const int32_t *ids,
        const REAL *means2d, const REAL *conics, const REAL *opac, const REAL *colors, const REAL *bg,
        REAL *out, REAL *out_T, int32_t *last, int nthreads) {
    int64_t counter = 0;
    PARALLEL(nthreads)
    SFX(rasterize_fwd_body)(I, N, D, W, H, tw, th, offsets, ids, means2d, conics, opac, colors, bg, out, out_T,
                            last, &counter);
}

/* Back to front from each pixel's last contributor, as gsplat's CUDA backward, Gaussian by Gaussian over
   the tile. A work unit is `unit` consecutive tiles; gradients go to this thread's buffers (shared when
   units are whole images, which never share gradient slots). */
static void SFX(rasterize_bwd_body)(int I, int N, int D, int W, int H, int tw, int th,
        const int64_t *offsets, const int32_t *ids,
        const REAL *means2d, const REAL *conics, const REAL *opac, const REAL *colors, const REAL *bg,
        const REAL *out_T, const int32_t *last, const REAL *v_out, const REAL *v_alpha,
        REAL *v_means2d, REAL *v_conics, REAL *v_opac, REAL *v_colors,
        int64_t *counter, int64_t unit) {
    int64_t nt = (int64_t)tw * th, total = (int64_t)I * nt, HW = (int64_t)H * W, cap = 0;
    REAL *buf = NULL, T[NPIX], Tf[NPIX], va[NPIX], bgdot[NPIX];
    int32_t lastj[NPIX];
    int Dm = D > 0 ? D : 1;
    REAL *buffer = (REAL *)malloc((size_t)NPIX * Dm * sizeof(REAL));
    REAL *vc = (REAL *)malloc((size_t)NPIX * Dm * sizeof(REAL));
    REAL *gcol = (REAL *)malloc((size_t)Dm * sizeof(REAL));
    for (;;) {
        int64_t u = __atomic_fetch_add(counter, 1, __ATOMIC_RELAXED);
        if (u * unit >= total) break;
        for (int64_t gt = u * unit; gt < (u + 1) * unit && gt < total; ++gt) {
            int64_t img = gt / nt, t = gt % nt;
            int x0 = (int)(t % tw) * TS, y0 = (int)(t / tw) * TS;
            int tw_ = W - x0 < TS ? W - x0 : TS, th_ = H - y0 < TS ? H - y0 : TS;
            int64_t s = offsets[gt], L = offsets[gt + 1] - s;
            if (L == 0) continue;
            const int32_t *tid = ids + s;
            const REAL *bgi = bg ? bg + img * D : NULL;
            int32_t jmax = -1;
            for (int k = 0; k < NPIX; ++k) lastj[k] = -1;
            for (int r = 0; r < th_; ++r) {
                for (int cc = 0; cc < tw_; ++cc) {
                    int k = r * TS + cc;
                    int64_t pix = img * HW + (int64_t)(y0 + r) * W + x0 + cc;
                    lastj[k] = last[pix];
                    if (lastj[k] > jmax) jmax = lastj[k];
                    T[k] = Tf[k] = out_T[pix];
                    va[k] = v_alpha ? v_alpha[pix] : 0;
                    bgdot[k] = 0;
                    for (int d = 0; d < D; ++d) {
                        buffer[(int64_t)k * D + d] = 0;
                        vc[(int64_t)k * D + d] = v_out[(img * D + d) * HW + (pix - img * HW)];
                        if (bgi) bgdot[k] += bgi[d] * vc[(int64_t)k * D + d];
                    }
                }
            }
            if (jmax < 0) continue;
            SFX(pack)(&buf, &cap, jmax + 1, tid, img * N, means2d, conics, opac);
            const REAL *p = buf + (int64_t)jmax * NPACK;
            for (int64_t j = jmax; j >= 0; --j, p -= NPACK) {
                int r0, r1, c0, c1;
                if (!SFX(rows)(p, x0, y0, tw_, th_, &r0, &r1)) continue;
                int64_t g = img * N + tid[j];
                const REAL *col = colors + g * D;
                REAL gxy0 = 0, gxy1 = 0, gc0 = 0, gc1 = 0, gc2 = 0, gop = 0;
                int touched = 0;
                for (int d = 0; d < D; ++d) gcol[d] = 0;
                for (int r = r0; r <= r1; ++r) {
                    if (!SFX(span)(p, x0, y0, tw_, r, &c0, &c1)) continue;
                    REAL dy = p[1] - ((REAL)(y0 + r) + (REAL)0.5);
                    for (int cc = c0; cc <= c1; ++cc) {
                        int k = r * TS + cc;
                        if (lastj[k] < j) continue;
                        REAL dx = p[0] - ((REAL)(x0 + cc) + (REAL)0.5);
                        REAL sigma = (REAL)0.5 * (p[2] * dx * dx + p[4] * dy * dy) + p[3] * dx * dy;
                        if (sigma < 0 || sigma > p[6]) continue;
                        REAL vis = EXP(-sigma);
                        REAL alpha = p[5] * vis;
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
                        if (p[5] * vis <= (REAL)0.999) {
                            REAL v_sigma = -p[5] * vis * v_a;
                            gc0 += (REAL)0.5 * v_sigma * dx * dx;
                            gc1 += v_sigma * dx * dy;
                            gc2 += (REAL)0.5 * v_sigma * dy * dy;
                            gxy0 += v_sigma * (p[2] * dx + p[3] * dy);
                            gxy1 += v_sigma * (p[3] * dx + p[4] * dy);
                            gop += vis * v_a;
                        }
                    }
                }
                if (!touched) continue;
                REAL *vcol = v_colors + g * D;
                for (int d = 0; d < D; ++d) vcol[d] += gcol[d];
                v_conics[3 * g] += gc0; v_conics[3 * g + 1] += gc1; v_conics[3 * g + 2] += gc2;
                v_means2d[2 * g] += gxy0; v_means2d[2 * g + 1] += gxy1;
                v_opac[g] += gop;
            }
        }
    }
    free(gcol); free(vc); free(buffer);
    free(buf);
}

/* per_thread: gradient buffers are [threads, I, N, k] and thread t writes slice t; else one shared slice
   (work units are whole images then, which never share gradient slots). */
void SFX(rasterize_bwd)(int I, int N, int D, int W, int H, int tw, int th,
        const int64_t *offsets, const int32_t *ids,
        const REAL *means2d, const REAL *conics, const REAL *opac, const REAL *colors, const REAL *bg,
        const REAL *out_T, const int32_t *last, const REAL *v_out, const REAL *v_alpha,
        REAL *v_means2d, REAL *v_conics, REAL *v_opac, REAL *v_colors, int per_thread, int nthreads) {
    int64_t counter = 0, unit = per_thread ? 1 : (int64_t)tw * th, IN = (int64_t)I * N;
    PARALLEL(nthreads)
    {
        int64_t k = per_thread ? THREAD_ID : 0;
        SFX(rasterize_bwd_body)(I, N, D, W, H, tw, th, offsets, ids, means2d, conics, opac, colors, bg, out_T,
                                last, v_out, v_alpha, v_means2d + k * IN * 2, v_conics + k * IN * 3,
                                v_opac + k * IN, v_colors + k * IN * D, &counter, unit);
    }
}
