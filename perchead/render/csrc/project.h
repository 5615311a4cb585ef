/* EWA projection of Gaussians into pinhole cameras, as gsplat's fused projection, forward and backward.
   Written over REAL and SFX(name) and included once per precision by render.c (not a standalone file). */

static inline __attribute__((always_inline)) void SFX(rotmat)(const REAL *q, REAL *qn, REAL *R) {
    REAL inv = 1 / SQRT(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3]);
    REAL w = q[0] * inv, x = q[1] * inv, y = q[2] * inv, z = q[3] * inv;
    qn[0] = w; qn[1] = x; qn[2] = y; qn[3] = z;
    R[0] = 1 - 2 * (y * y + z * z); R[1] = 2 * (x * y - w * z); R[2] = 2 * (x * z + w * y);
    R[3] = 2 * (x * y + w * z); R[4] = 1 - 2 * (x * x + z * z); R[5] = 2 * (y * z - w * x);
    R[6] = 2 * (x * z - w * y); R[7] = 2 * (y * z + w * x); R[8] = 1 - 2 * (x * x + y * y);
}

typedef struct {
    REAL mc[3], ux, uy, uxc, uyc, inx, iny, T0[3], T1[3], A0[3], A1[3], c00, c01, c11, det;
} SFX(proj_t);

/* returns 1 if the depth is inside (near, far) */
static inline __attribute__((always_inline)) int SFX(project_one)(
        const REAL *m, const REAL *M, const REAL *vm, const REAL *K, int W, int H, REAL eps2d, REAL near, REAL far,
        SFX(proj_t) *P) {
    for (int i = 0; i < 3; ++i) P->mc[i] = vm[4 * i] * m[0] + vm[4 * i + 1] * m[1] + vm[4 * i + 2] * m[2] + vm[4 * i + 3];
    REAL z = P->mc[2];
    if (!(z > near && z < far)) return 0;
    REAL fx = K[0], fy = K[4], cx = K[2], cy = K[5];
    P->ux = P->mc[0] / z; P->uy = P->mc[1] / z;
    REAL tx = (REAL)0.5 * W / fx, ty = (REAL)0.5 * H / fy;
    REAL lxn = -(cx / fx + (REAL)0.3 * tx), lxp = (W - cx) / fx + (REAL)0.3 * tx;
    REAL lyn = -(cy / fy + (REAL)0.3 * ty), lyp = (H - cy) / fy + (REAL)0.3 * ty;
    P->uxc = P->ux < lxn ? lxn : (P->ux > lxp ? lxp : P->ux);
    P->uyc = P->uy < lyn ? lyn : (P->uy > lyp ? lyp : P->uy);
    P->inx = P->ux > lxn && P->ux < lxp; P->iny = P->uy > lyn && P->uy < lyp;
    for (int j = 0; j < 3; ++j) {
        P->T0[j] = fx / z * (vm[j] - P->uxc * vm[8 + j]);
        P->T1[j] = fy / z * (vm[4 + j] - P->uyc * vm[8 + j]);
    }
    for (int k = 0; k < 3; ++k) {
        P->A0[k] = P->T0[0] * M[k] + P->T0[1] * M[3 + k] + P->T0[2] * M[6 + k];
        P->A1[k] = P->T1[0] * M[k] + P->T1[1] * M[3 + k] + P->T1[2] * M[6 + k];
    }
    P->c00 = P->A0[0] * P->A0[0] + P->A0[1] * P->A0[1] + P->A0[2] * P->A0[2] + eps2d;
    P->c01 = P->A0[0] * P->A1[0] + P->A0[1] * P->A1[1] + P->A0[2] * P->A1[2];
    P->c11 = P->A1[0] * P->A1[0] + P->A1[1] * P->A1[1] + P->A1[2] * P->A1[2] + eps2d;
    P->det = P->c00 * P->c11 - P->c01 * P->c01;
    return 1;
}

/* Work units are (batch item, block of 1024 Gaussians); each loops over all V views. */
static void SFX(project_fwd_body)(int B, int V, int N, const REAL *means, const REAL *quats, const REAL *scales,
        const REAL *opac, const REAL *viewmats, const REAL *Ks, int W, int H, REAL eps2d, REAL near, REAL far,
        REAL *means2d, REAL *conics, REAL *depths, int32_t *radii, int64_t *counter) {
    int64_t nblk = (N + 1023) / 1024, total = (int64_t)B * nblk;
    for (;;) {
        int64_t u = __atomic_fetch_add(counter, 1, __ATOMIC_RELAXED);
        if (u >= total) break;
        int64_t b = u / nblk, n0 = (u % nblk) * 1024, n1 = n0 + 1024 < N ? n0 + 1024 : N;
        for (int64_t n = n0; n < n1; ++n) {
            int64_t bn = b * N + n;
            REAL qn[4], R[9], M[9];
            SFX(rotmat)(quats + 4 * bn, qn, R);
            for (int i = 0; i < 9; ++i) M[i] = R[i] * scales[3 * bn + i % 3];
            REAL o = opac[bn];
            for (int v = 0; v < V; ++v) {
                int64_t bv = b * V + v, idx = bv * N + n;
                SFX(proj_t) P;
                int ok = SFX(project_one)(means + 3 * bn, M, viewmats + 16 * bv, Ks + 9 * bv, W, H, eps2d, near, far, &P);
                depths[idx] = P.mc[2];
                radii[2 * idx] = radii[2 * idx + 1] = 0;
                if (!ok) {
                    means2d[2 * idx] = means2d[2 * idx + 1] = 0;
                    conics[3 * idx] = conics[3 * idx + 1] = conics[3 * idx + 2] = 0;
                    continue;
                }
                const REAL *K = Ks + 9 * bv;
                REAL mx = K[0] * P.ux + K[2], my = K[4] * P.uy + K[5];
                means2d[2 * idx] = mx; means2d[2 * idx + 1] = my;
                REAL ds = P.det > (REAL)1e-10 ? P.det : (REAL)1e-10;
                conics[3 * idx] = P.c11 / ds; conics[3 * idx + 1] = -P.c01 / ds; conics[3 * idx + 2] = P.c00 / ds;
                if (!(P.det > 0) || o < (REAL)(1.0 / 255.0)) continue;
                double ext = sqrt(2.0 * log((double)o * 255.0));
                if (ext > 3.33) ext = 3.33;
                double rx = ceil(ext * sqrt((double)P.c00)), ry = ceil(ext * sqrt((double)P.c11));
                if (rx <= 0 && ry <= 0) continue;
                if (mx + rx <= 0 || mx - rx >= W || my + ry <= 0 || my - ry >= H) continue;
                radii[2 * idx] = (int32_t)rx; radii[2 * idx + 1] = (int32_t)ry;
            }
        }
    }
}

void SFX(project_fwd)(int B, int V, int N, const REAL *means, const REAL *quats, const REAL *scales,
        const REAL *opac, const REAL *viewmats, const REAL *Ks, int W, int H, REAL eps2d, REAL near, REAL far,
        REAL *means2d, REAL *conics, REAL *depths, int32_t *radii, int nthreads) {
    int64_t counter = 0;
    PARALLEL(nthreads)
    SFX(project_fwd_body)(B, V, N, means, quats, scales, opac, viewmats, Ks, W, H, eps2d, near, far, means2d,
                          conics, depths, radii, &counter);
}

static void SFX(project_bwd_body)(int B, int V, int N, const REAL *means, const REAL *quats, const REAL *scales,
        const REAL *viewmats, const REAL *Ks, int W, int H, REAL eps2d, REAL near, REAL far,
        const REAL *v_means2d, const REAL *v_conics, const REAL *v_depths,
        REAL *v_means, REAL *v_quats, REAL *v_scales, int64_t *counter) {
    int64_t nblk = (N + 1023) / 1024, total = (int64_t)B * nblk;
    for (;;) {
        int64_t u = __atomic_fetch_add(counter, 1, __ATOMIC_RELAXED);
        if (u >= total) break;
        int64_t b = u / nblk, n0 = (u % nblk) * 1024, n1 = n0 + 1024 < N ? n0 + 1024 : N;
        for (int64_t n = n0; n < n1; ++n) {
            int64_t bn = b * N + n;
            const REAL *q = quats + 4 * bn, *s = scales + 3 * bn;
            REAL qn[4], R[9], M[9], vM[9] = {0}, vm_[3] = {0};
            SFX(rotmat)(q, qn, R);
            for (int i = 0; i < 9; ++i) M[i] = R[i] * s[i % 3];
            for (int v = 0; v < V; ++v) {
                int64_t bv = b * V + v, idx = bv * N + n;
                const REAL *vm = viewmats + 16 * bv, *K = Ks + 9 * bv;
                SFX(proj_t) P;
                if (!SFX(project_one)(means + 3 * bn, M, vm, K, W, H, eps2d, near, far, &P)) continue;
                REAL z = P.mc[2], fx = K[0], fy = K[4];
                REAL vc0 = 0, vc01 = 0, vc1 = 0;  /* d/d c00, c01, c11 */
                const REAL *vq = v_conics + 3 * idx;
                if (P.det > (REAL)1e-10) {
                    REAL id = 1 / P.det;
                    REAL p00 = P.c11 * id, p01 = -P.c01 * id, p11 = P.c00 * id;
                    REAL g00 = vq[0], g01 = (REAL)0.5 * vq[1], g11 = vq[2];
                    /* -P G P (symmetric); c01 enters twice */
                    REAL h00 = p00 * g00 + p01 * g01, h01 = p00 * g01 + p01 * g11;
                    REAL h10 = p01 * g00 + p11 * g01, h11 = p01 * g01 + p11 * g11;
                    vc0 = -(h00 * p00 + h01 * p01);
                    vc01 = -2 * (h00 * p01 + h01 * p11);
                    vc1 = -(h10 * p01 + h11 * p11);
                } else {
                    vc0 = vq[2] * (REAL)1e10; vc01 = -vq[1] * (REAL)1e10; vc1 = vq[0] * (REAL)1e10;
                }
                REAL vA0[3], vA1[3], vT0[3] = {0}, vT1[3] = {0};
                for (int k = 0; k < 3; ++k) {
                    vA0[k] = 2 * vc0 * P.A0[k] + vc01 * P.A1[k];
                    vA1[k] = 2 * vc1 * P.A1[k] + vc01 * P.A0[k];
                }
                for (int j = 0; j < 3; ++j) {
                    for (int k = 0; k < 3; ++k) {
                        vT0[j] += M[3 * j + k] * vA0[k];
                        vT1[j] += M[3 * j + k] * vA1[k];
                        vM[3 * j + k] += P.T0[j] * vA0[k] + P.T1[j] * vA1[k];
                    }
                }
                REAL vz = v_depths ? v_depths[idx] : 0, vuxc = 0, vuyc = 0;
                for (int j = 0; j < 3; ++j) {
                    vz -= (P.T0[j] * vT0[j] + P.T1[j] * vT1[j]) / z;
                    vuxc -= fx / z * vm[8 + j] * vT0[j];
                    vuyc -= fy / z * vm[8 + j] * vT1[j];
                }
                REAL vux = fx * v_means2d[2 * idx] + (P.inx ? vuxc : 0);
                REAL vuy = fy * v_means2d[2 * idx + 1] + (P.iny ? vuyc : 0);
                REAL vx = vux / z, vy = vuy / z;
                vz -= (vux * P.ux + vuy * P.uy) / z;
                for (int i = 0; i < 3; ++i) vm_[i] += vm[i] * vx + vm[4 + i] * vy + vm[8 + i] * vz;
            }
            /* M = R diag(s) */
            REAL vR[9];
            for (int i = 0; i < 9; ++i) vR[i] = vM[i] * s[i % 3];
            for (int k = 0; k < 3; ++k) v_scales[3 * bn + k] += vM[k] * R[k] + vM[3 + k] * R[3 + k] + vM[6 + k] * R[6 + k];
            REAL w = qn[0], x = qn[1], y = qn[2], zq = qn[3], g[4];
            g[0] = 2 * (-zq * vR[1] + y * vR[2] + zq * vR[3] - x * vR[5] - y * vR[6] + x * vR[7]);
            g[1] = 2 * (y * vR[1] + zq * vR[2] + y * vR[3] - 2 * x * vR[4] - w * vR[5] + zq * vR[6] + w * vR[7] - 2 * x * vR[8]);
            g[2] = 2 * (-2 * y * vR[0] + x * vR[1] + w * vR[2] + x * vR[3] + zq * vR[5] - w * vR[6] + zq * vR[7] - 2 * y * vR[8]);
            g[3] = 2 * (-2 * zq * vR[0] - w * vR[1] + x * vR[2] + w * vR[3] - 2 * zq * vR[4] + y * vR[5] + x * vR[6] + y * vR[7]);
            REAL inv = 1 / SQRT(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3]);
            REAL dot = g[0] * w + g[1] * x + g[2] * y + g[3] * zq;
            for (int i = 0; i < 4; ++i) v_quats[4 * bn + i] += (g[i] - qn[i] * dot) * inv;
            for (int i = 0; i < 3; ++i) v_means[3 * bn + i] += vm_[i];
        }
    }
}

void SFX(project_bwd)(int B, int V, int N, const REAL *means, const REAL *quats, const REAL *scales,
        const REAL *viewmats, const REAL *Ks, int W, int H, REAL eps2d, REAL near, REAL far,
        const REAL *v_means2d, const REAL *v_conics, const REAL *v_depths,
        REAL *v_means, REAL *v_quats, REAL *v_scales, int nthreads) {
    int64_t counter = 0;
    PARALLEL(nthreads)
    SFX(project_bwd_body)(B, V, N, means, quats, scales, viewmats, Ks, W, H, eps2d, near, far, v_means2d,
                          v_conics, v_depths, v_means, v_quats, v_scales, &counter);
}
