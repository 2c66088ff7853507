/* mvtrace test program: three pthreads working on their own arrays.

   Every instruction path here is independent of how the threads are scheduled, so that
   two runs (mvtrace and Lackey, at very different speeds) execute exactly the same
   instructions: the threads take no lock and do not allocate; they wait for a 1-byte
   "go" on a pipe until all of them exist (pthread_create takes another path once the
   other threads are gone), each reports "done" with a 1-byte write to a pipe, the main
   thread waits with 1-byte blocking reads (the same instructions whether or not they
   block), then sleeps so that the threads have finished exiting before pthread_join
   (which would otherwise wait, or not). */
#include <pthread.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#define NT 3
#define N (128 * 1024)

static long data[NT][N];
static long result[NT];
static int done_pipe[2];
static int go_pipe[2];

static void* worker(void* arg)
{
    long id = (long)arg, s = 0;
    long* a = data[id];
    char c = 0;
    if (read(go_pipe[0], &c, 1) != 1)
        return NULL;
    for (long r = 0; r < 3; r++)
        for (long i = 0; i < N; i += 3) {
            a[i] = i + r + id;
            s += a[(i * 7) % N];
        }
    result[id] = s;
    c = 'x';
    if (write(done_pipe[1], &c, 1) != 1)
        result[id] = -1;
    return NULL;
}

int main(void)
{
    pthread_t t[NT];
    long total = 0;
    char c;
    if (pipe(done_pipe) != 0 || pipe(go_pipe) != 0)
        return 1;
    for (long i = 0; i < NT; i++)
        pthread_create(&t[i], NULL, worker, (void*)i);
    if (write(go_pipe[1], "xxx", NT) != NT)
        return 1;
    for (int i = 0; i < NT; i++)
        if (read(done_pipe[0], &c, 1) != 1)
            return 1;
    struct timespec ts = {0, 300 * 1000 * 1000};
    nanosleep(&ts, NULL);
    for (int i = 0; i < NT; i++) {
        pthread_join(t[i], NULL);
        total += result[i];
    }
    printf("%ld\n", total);
    return 0;
}
