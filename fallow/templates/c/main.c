/* {{name}}: a Fallow project module. Each work unit runs this program once, with the
 * unit's input on stdin; what it prints on stdout is the unit's result, compared byte for
 * byte between the workers that ran it.
 *
 * The rules (the sandbox enforces them):
 * - read the input from stdin, write the result to stdout, return 0 on success; anything
 *   on stderr is kept (the end of it) as the reason when the unit fails;
 * - no files (fopen fails with "Capabilities insufficient"), no network, no environment;
 * - the clock is frozen: srand(time(NULL)) gives every unit the same numbers. Seed from
 *   getentropy() instead: it is the same stream on every worker, seeded from the unit's
 *   name and input, so results still match byte for byte.
 *
 * This example estimates pi by Monte Carlo: the input is one line `SAMPLES`, the output the
 * number of points inside the quarter circle and the estimate.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* xorshift64*: small and the same on every machine (rand() is too, but its quality varies). */
static uint64_t next(uint64_t *s) {
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ULL;
}

int main(void) {
    unsigned long long samples;
    if (scanf("%llu", &samples) != 1) {
        fprintf(stderr, "expected SAMPLES on stdin\n");
        return 1;
    }
    uint64_t seed = 0;
    if (getentropy(&seed, sizeof seed) != 0) {
        perror("getentropy");
        return 1;
    }
    seed |= 1; /* xorshift needs a non-zero state */
    unsigned long long inside = 0;
    for (unsigned long long i = 0; i < samples; i++) {
        double x = (double)(next(&seed) >> 11) / 9007199254740992.0;
        double y = (double)(next(&seed) >> 11) / 9007199254740992.0;
        if (x * x + y * y <= 1.0) {
            inside++;
        }
    }
    printf("%llu %llu %.9f\n", inside, samples, 4.0 * (double)inside / (double)samples);
    return 0;
}
