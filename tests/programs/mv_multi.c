/* mvtrace test program: fork + exec of another binary + wait, and a second forked child
   that computes and exits with a status.  argv[1] is the program to exec (with argument
   "2"). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static long work(long n)
{
    long s = 0;
    char* p = malloc(n);
    memset(p, 3, n);
    for (long i = 0; i < n; i += 100)
        s += p[i];
    free(p);
    return s;
}

int main(int argc, char** argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: mv_multi PROGRAM\n");
        return 2;
    }
    fflush(stdout);
    pid_t c1 = fork();
    if (c1 == 0) {
        execl(argv[1], argv[1], "2", (char*)NULL);
        _exit(127);
    }
    pid_t c2 = fork();
    if (c2 == 0) {
        work(100000);
        _exit(7);
    }
    long s = work(50000);
    int st1 = 0, st2 = 0;
    waitpid(c1, &st1, 0);
    waitpid(c2, &st2, 0);
    printf("%ld %d %d\n", s, WEXITSTATUS(st1), WEXITSTATUS(st2));
    return WEXITSTATUS(st2) == 7 ? 0 : 1;
}
