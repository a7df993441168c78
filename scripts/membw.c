/* Memory read bandwidth: sums a 1 GiB buffer of 64-bit words with N threads
 * (OpenMP), best of 5 passes. This is the roof for token generation, which
 * reads every weight once per token.
 *
 *   cc -O3 -march=native -fopenmp scripts/membw.c -o /tmp/membw && /tmp/membw 2
 */
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 1;
    size_t n = (size_t)1 << 27; /* 2^27 words = 1 GiB */
    uint64_t *buf = malloc(n * sizeof *buf);
    if (!buf) return 1;
    for (size_t i = 0; i < n; i++) buf[i] = i;
    omp_set_num_threads(threads);
    double best = 0;
    uint64_t sink = 0;
    for (int rep = 0; rep < 5; rep++) {
        double t0 = omp_get_wtime();
        uint64_t s = 0;
#pragma omp parallel for reduction(+ : s) schedule(static)
        for (size_t i = 0; i < n; i++) s += buf[i];
        double dt = omp_get_wtime() - t0;
        sink += s;
        double gbs = n * sizeof *buf / dt / 1e9;
        if (gbs > best) best = gbs;
    }
    printf("threads %d: %.2f GB/s (best of 5, 1 GiB read; checksum %llu)\n", threads, best, (unsigned long long)(sink & 0xff));
    free(buf);
    return 0;
}
