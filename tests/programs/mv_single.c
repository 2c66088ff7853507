/* mvtrace test program: one process, no threads.
   Array loops, accesses that cross a page boundary, rep movs / rep stos (also through
   memcpy and memset), a locked compare-and-swap and read-modify-write instructions. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>

static void rep_movsb(void* d, const void* s, size_t n)
{
    __asm__ volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(n) : : "memory");
}

static void rep_stosq(void* d, uint64_t v, size_t n)
{
    __asm__ volatile("rep stosq" : "+D"(d), "+c"(n) : "a"(v) : "memory");
}

int main(int argc, char** argv)
{
    long rounds = argc > 1 ? atol(argv[1]) : 3;
    size_t n = 64 * 1024;
    unsigned char* a = aligned_alloc(4096, n);
    unsigned char* b = aligned_alloc(4096, n);
    volatile long counter = 0;
    long sum = 0;
    memset(a, 1, n);
    memset(b, 2, n);
    for (long r = 0; r < rounds; r++) {
        for (size_t i = 0; i < n; i += 64)      /* one load per cache line */
            sum += a[i];
        for (size_t i = 0; i < n; i += 512)     /* stores on every page */
            b[i] = (unsigned char)(i + r);
        for (size_t p = 4096; p < n; p += 4096) { /* 8-byte accesses across page ends */
            uint64_t v;
            memcpy(&v, a + p - 4, 8);
            sum += (long)v;
            v += 1;
            memcpy(b + p - 3, &v, 8);
        }
        rep_movsb(b + 100, a + 5000, 3000);     /* crosses a page */
        rep_stosq(b + 8192 - 16, (uint64_t)r, 9);
        memcpy(a + 1, b + 2, 20000);
        memset(b + 7, (int)r, 9000);
        for (int k = 0; k < 100; k++) {
            counter += 1;                       /* load + store of the same address */
            __sync_fetch_and_add((long*)(a + 64), 1);  /* locked CAS */
        }
    }
    printf("%ld %ld\n", sum, (long)counter);
    free(a);
    free(b);
    return 0;
}
