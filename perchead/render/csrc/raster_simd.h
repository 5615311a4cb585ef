/* The float compositor over lanes of VW neighbouring pixels of a tile row (simd.h), forward and backward:
   rasterize.h includes it once per lane count with VW, VF / VI (vector types), VSPLAT, VISPLAT, VAND,
   VSEL, VISEL, VBITS, VEXP, VSUM (simd.h's helpers of that width), VN(name) (the name with the width) and
   VATTR (the target attribute) defined, and undefines them at its end. A row segment is covered by whole aligned VW-pixel blocks, each
   lane running the scalar compositor's per-pixel test; exp is simd.h's. Every lane computes what the
   scalar code computes for its pixel, so the widths give the same images. */

#define NB (NPIX / VW) /* blocks per tile */

static inline __attribute__((always_inline)) VATTR void VN(fwd_tile)(
        int64_t img, int64_t gt, int N, int D, int W, int H, int tw, int th, const int64_t *offsets,
        const int32_t *ids, const REAL *rec, const REAL *colors, const REAL *bg, REAL *out, REAL *out_T,
        int32_t *last, VF *acc /* [D, NB] */) {
    int64_t nt = (int64_t)tw * th, HW = (int64_t)H * W, t = gt % nt;
    VF T[NB], colc[TS / VW];
    VI live[NB], lastj[NB];
    int x0 = (int)(t % tw) * TS, y0 = (int)(t / tw) * TS;
    int tw_ = W - x0 < TS ? W - x0 : TS, th_ = H - y0 < TS ? H - y0 : TS;
    int64_t s = offsets[gt], L = offsets[gt + 1] - s;
    const int32_t *tid = ids + s;
    const REAL *bgi = bg ? bg + img * D : NULL;
    if (L == 0) {  /* nothing to composite: the background */
        for (int r = 0; r < th_; ++r) {
            int64_t pix = (int64_t)(y0 + r) * W + x0;
            for (int d = 0; d < D; ++d)
                for (int cc = 0; cc < tw_; ++cc) out[(img * D + d) * HW + pix + cc] = bgi ? bgi[d] : 0;
            for (int cc = 0; cc < tw_; ++cc) {
                out_T[img * HW + pix + cc] = 1;
                last[img * HW + pix + cc] = -1;
            }
        }
        return;
    }
    for (int b = 0; b < TS / VW; ++b)
        for (int l = 0; l < VW; ++l) colc[b][l] = (REAL)(x0 + VW * b + l) + (REAL)0.5;
    for (int kb = 0; kb < NB; ++kb) {
        int r = kb / (TS / VW), c = VW * (kb % (TS / VW));
        T[kb] = VSPLAT(1);
        lastj[kb] = VISPLAT(-1);
        for (int l = 0; l < VW; ++l) live[kb][l] = r < th_ && c + l < tw_ ? -1 : 0;
        for (int d = 0; d < D; ++d) acc[d * NB + kb] = VSPLAT(0);
    }
    int remaining = tw_ * th_, row_left[TS];
    for (int r = 0; r < TS; ++r) row_left[r] = r < th_ ? tw_ : 0;
    for (int64_t j = 0; j < L && remaining > 0; ++j) {
        if (j + PREFETCH < L) {
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
        VI vj = VISPLAT((int32_t)j);
        for (int r = r0; r <= r1; ++r) {
            if (row_left[r] == 0 || !SFX(rec_span)(p, x0, y0, tw_, r, &c0, &c1)) continue;
            REAL dy = py - ((REAL)(y0 + r) + (REAL)0.5);
            REAL cdy = pc * dy * dy;
            for (int b = c0 / VW; b <= c1 / VW; ++b) {
                int kb = r * (TS / VW) + b;
                VF dx = px - colc[b];
                VF sigma = (REAL)0.5 * (pa * dx * dx + cdy) + pb * dx * dy;
                VI m = ~(sigma < 0) & ~(sigma > thr) & live[kb];
                if (!VBITS(m)) continue;
                VF alpha = po * VEXP(-sigma);
                alpha = VSEL(alpha > (REAL)0.999, VSPLAT((REAL)0.999), alpha);
                m &= ~(alpha < (REAL)(1.0 / 255.0));
                if (!VBITS(m)) continue;
                VF Tk = T[kb], next_T = Tk * (1 - alpha);
                VI term = m & (next_T <= (REAL)1e-4);
                int tb = VBITS(term);
                if (tb) {
                    int n_done = 0;
                    for (int l = 0; l < VW; ++l) n_done += (tb >> l) & 1;
                    live[kb] &= ~term;
                    remaining -= n_done;
                    row_left[r] -= n_done;
                    m &= ~term;
                }
                VF vis = VAND(alpha * Tk, m);
                for (int d = 0; d < D; ++d) acc[d * NB + kb] += col[d] * vis;
                T[kb] = VSEL(m, next_T, Tk);
                lastj[kb] = VISEL(m, vj, lastj[kb]);
            }
        }
    }
    for (int r = 0; r < th_; ++r) {
        int64_t pix = (int64_t)(y0 + r) * W + x0;
        if (tw_ == TS) {  /* whole blocks: vector stores */
            for (int b = 0; b < TS / VW; ++b) {
                int kb = r * (TS / VW) + b;
                for (int d = 0; d < D; ++d) {
                    VF v = acc[d * NB + kb] + (bgi ? T[kb] * bgi[d] : VSPLAT(0));
                    memcpy(out + (img * D + d) * HW + pix + VW * b, &v, sizeof v);
                }
                memcpy(out_T + img * HW + pix + VW * b, &T[kb], sizeof(VF));
                memcpy(last + img * HW + pix + VW * b, &lastj[kb], sizeof(VI));
            }
            continue;
        }
        for (int cc = 0; cc < tw_; ++cc) {
            int kb = r * (TS / VW) + cc / VW, l = cc % VW;
            REAL Tp = T[kb][l];
            for (int d = 0; d < D; ++d)
                out[(img * D + d) * HW + pix + cc] = acc[d * NB + kb][l] + (bgi ? Tp * bgi[d] : 0);
            out_T[img * HW + pix + cc] = Tp;
            last[img * HW + pix + cc] = lastj[kb][l];
        }
    }
}

static inline __attribute__((always_inline)) VATTR void VN(bwd_tile)(
        int64_t img, int64_t gt, int N, int D, int W, int H, int tw, int th,
        const int64_t *offsets, const int32_t *ids, const REAL *rec, const REAL *colors, const REAL *bg,
        const REAL *out_T, const int32_t *last, const REAL *v_out, const REAL *v_alpha, REAL *grad, int gs,
        VF *buffer /* [D, NB] */, VF *vc /* [D, NB] */, VF *gcol /* [D] */) {
    int64_t nt = (int64_t)tw * th, HW = (int64_t)H * W, t = gt % nt;
    VF T[NB], Tfv[NB], colc[TS / VW];
    VI lastj[NB];
    int32_t rowmax[TS];
    int x0 = (int)(t % tw) * TS, y0 = (int)(t / tw) * TS;
    int tw_ = W - x0 < TS ? W - x0 : TS, th_ = H - y0 < TS ? H - y0 : TS;
    int64_t s = offsets[gt], L = offsets[gt + 1] - s;
    if (L == 0) return;
    const int32_t *tid = ids + s;
    const REAL *bgi = bg ? bg + img * D : NULL;
    for (int b = 0; b < TS / VW; ++b)
        for (int l = 0; l < VW; ++l) colc[b][l] = (REAL)(x0 + VW * b + l) + (REAL)0.5;
    int32_t jmax = -1;
    for (int r = 0; r < TS; ++r) rowmax[r] = -1;
    for (int kb = 0; kb < NB; ++kb) {
        int r = kb / (TS / VW), c = VW * (kb % (TS / VW));
        if (tw_ == TS && r < th_) {  /* a whole block of pixels: vector loads */
            int64_t pix = img * HW + (int64_t)(y0 + r) * W + x0 + c;
            VF Tp, vap = VSPLAT(0), bgdot = VSPLAT(0);
            memcpy(&lastj[kb], last + pix, sizeof(VI));
            memcpy(&Tp, out_T + pix, sizeof Tp);
            if (v_alpha) memcpy(&vap, v_alpha + pix, sizeof vap);
            for (int d = 0; d < D; ++d) {
                VF v;
                memcpy(&v, v_out + (img * D + d) * HW + (pix - img * HW), sizeof v);
                buffer[d * NB + kb] = VSPLAT(0);
                vc[d * NB + kb] = v;
                if (bgi) bgdot += bgi[d] * v;
            }
            T[kb] = Tp;
            Tfv[kb] = Tp * (vap - bgdot);
            for (int l = 0; l < VW; ++l) rowmax[r] = lastj[kb][l] > rowmax[r] ? lastj[kb][l] : rowmax[r];
            continue;
        }
        for (int l = 0; l < VW; ++l) {
            int cc = c + l;
            REAL Tp = 1, vap = 0, bgdot = 0;
            int32_t lj = -1;
            int64_t pix = img * HW + (int64_t)(y0 + r) * W + x0 + cc;
            int inside = r < th_ && cc < tw_;
            if (inside) {
                lj = last[pix];
                Tp = out_T[pix];
                vap = v_alpha ? v_alpha[pix] : 0;
            }
            for (int d = 0; d < D; ++d) {
                REAL v = inside ? v_out[(img * D + d) * HW + (pix - img * HW)] : 0;
                buffer[d * NB + kb][l] = 0;
                vc[d * NB + kb][l] = v;
                if (bgi) bgdot += bgi[d] * v;
            }
            lastj[kb][l] = lj;
            T[kb][l] = Tp;
            Tfv[kb][l] = Tp * (vap - bgdot);  /* Tf (v_alpha - bg . v_out) */
            if (lj > rowmax[r]) rowmax[r] = lj;
        }
    }
    for (int r = 0; r < TS; ++r) jmax = rowmax[r] > jmax ? rowmax[r] : jmax;
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
        VF gxy0 = VSPLAT(0), gxy1 = gxy0, gc0 = gxy0, gc1 = gxy0, gc2 = gxy0, gop = gxy0;
        int touched = 0;
        VI vj = VISPLAT((int32_t)j);
        for (int d = 0; d < D; ++d) gcol[d] = VSPLAT(0);
        for (int r = r0; r <= r1; ++r) {
            if (rowmax[r] < j || !SFX(rec_span)(p, x0, y0, tw_, r, &c0, &c1)) continue;
            REAL dy = py - ((REAL)(y0 + r) + (REAL)0.5);
            REAL cdy = pc * dy * dy;
            for (int b = c0 / VW; b <= c1 / VW; ++b) {
                int kb = r * (TS / VW) + b;
                VF dx = px - colc[b];
                VF sigma = (REAL)0.5 * (pa * dx * dx + cdy) + pb * dx * dy;
                VI m = ~(sigma < 0) & ~(sigma > thr) & ~(lastj[kb] < vj);
                if (!VBITS(m)) continue;
                VF vis = VEXP(-sigma);
                VF alpha = po * vis;
                alpha = VSEL(alpha > (REAL)0.999, VSPLAT((REAL)0.999), alpha);
                m &= ~(alpha < (REAL)(1.0 / 255.0));
                if (!VBITS(m)) continue;
                touched = 1;
                VF ra = (REAL)1 / (1 - alpha);
                VF Tk = T[kb] * ra;
                T[kb] = VSEL(m, Tk, T[kb]);
                VF fac = VAND(alpha * Tk, m), v_a = VSPLAT(0);  /* 0 in masked lanes: no update there */
                for (int d = 0; d < D; ++d) {
                    VF vk = vc[d * NB + kb], bk = buffer[d * NB + kb];
                    gcol[d] += fac * vk;
                    v_a += (col[d] * Tk - bk * ra) * vk;
                    buffer[d * NB + kb] = bk + col[d] * fac;
                }
                v_a += ra * Tfv[kb];
                VI m2 = m & ~(po * vis > (REAL)0.999);
                VF v_sigma = VAND(-po * vis * v_a, m2);
                gc0 += (REAL)0.5 * v_sigma * dx * dx;
                gc1 += v_sigma * dx * dy;
                gc2 += (REAL)0.5 * v_sigma * dy * dy;
                gxy0 += v_sigma * (pa * dx + pb * dy);
                gxy1 += v_sigma * (pb * dx + pc * dy);
                gop += VAND(vis * v_a, m2);
            }
        }
        if (!touched) continue;
        REAL *gr = grad + g * gs;
        gr[G_X] += VSUM(gxy0); gr[G_Y] += VSUM(gxy1);
        gr[G_A] += VSUM(gc0); gr[G_B] += VSUM(gc1); gr[G_C] += VSUM(gc2);
        gr[G_O] += VSUM(gop);
        for (int d = 0; d < D; ++d) gr[G_COL + d] += VSUM(gcol[d]);
    }
}

/* A thread's share of the forward: tiles in `sched` order, taken one at a time. */
static VATTR void VN(fwd_tiles)(int I, int N, int D, int W, int H, int tw, int th, const int64_t *offsets,
        const int32_t *ids, const REAL *rec, const REAL *colors, const REAL *bg, REAL *out, REAL *out_T,
        int32_t *last, const int64_t *sched, int64_t *counter) {
    int64_t nt = (int64_t)tw * th, total = (int64_t)I * nt;
    char *raw = (char *)malloc((size_t)NB * (D > 0 ? D : 1) * sizeof(VF) + 64);
    VF *acc = (VF *)(((uintptr_t)raw + 63) & ~(uintptr_t)63);
    for (;;) {
        int64_t u = __atomic_fetch_add(counter, 1, __ATOMIC_RELAXED);
        if (u >= total) break;
        int64_t gt = sched[u], img = gt / nt;
        if (D == 3)  /* the colours alone: a constant channel count */
            VN(fwd_tile)(img, gt, N, 3, W, H, tw, th, offsets, ids, rec, colors, bg, out, out_T, last, acc);
        else
            VN(fwd_tile)(img, gt, N, D, W, H, tw, th, offsets, ids, rec, colors, bg, out, out_T, last, acc);
    }
    free(raw);
}

/* A thread's share of the backward: units of `unit` tiles in `sched` order; gradients go to `grad`. */
static VATTR void VN(bwd_tiles)(int I, int N, int D, int W, int H, int tw, int th, const int64_t *offsets,
        const int32_t *ids, const REAL *rec, const REAL *colors, const REAL *bg, const REAL *out_T,
        const int32_t *last, const REAL *v_out, const REAL *v_alpha, REAL *grad, int gs, const int64_t *sched,
        WorkQueue *queue, int64_t unit) {
    int64_t nt = (int64_t)tw * th, total = (int64_t)I * nt;
    int Dm = D > 0 ? D : 1;
    char *raw = (char *)malloc((size_t)(2 * NB + 1) * Dm * sizeof(VF) + 64);
    VF *buffer = (VF *)(((uintptr_t)raw + 63) & ~(uintptr_t)63), *vc = buffer + NB * Dm, *gcol = vc + NB * Dm;
    for (;;) {
        int64_t u = take_unit(queue);
        if (u * unit >= total) break;
        for (int64_t i = u * unit; i < (u + 1) * unit && i < total; ++i) {
            int64_t gt = sched[i], img = gt / nt;
            if (D == 3)
                VN(bwd_tile)(img, gt, N, 3, W, H, tw, th, offsets, ids, rec, colors, bg, out_T, last, v_out,
                             v_alpha, grad, gs, buffer, vc, gcol);
            else
                VN(bwd_tile)(img, gt, N, D, W, H, tw, th, offsets, ids, rec, colors, bg, out_T, last, v_out,
                             v_alpha, grad, gs, buffer, vc, gcol);
        }
    }
    free(raw);
}

#undef NB
/* the including file's parameters end with this instantiation */
#undef VN
#undef VW
#undef VF
#undef VI
#undef VSPLAT
#undef VISPLAT
#undef VAND
#undef VSEL
#undef VISEL
#undef VBITS
#undef VEXP
#undef VSUM
#undef VATTR
