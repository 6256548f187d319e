#include "killpoint.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The step armed (by l2_killpoint_arm, else LAYER2_KILL_AT at the first step passed) and how
 * many more passes it lets go. */
static char armed[64];
static long left;
static int env_read;

void l2_killpoint_arm(const char *step, long nth)
{
    env_read = 1;
    snprintf(armed, sizeof armed, "%s", step ? step : "");
    left = nth > 0 ? nth : 1;
}

void l2_killpoint(const char *step)
{
    if (!env_read) {
        const char *v = getenv("LAYER2_KILL_AT");
        const char *hash = v ? strchr(v, '#') : NULL;
        env_read = 1;
        if (v && *v) {
            snprintf(armed, sizeof armed, "%.*s", (int)(hash ? hash - v : (long)strlen(v)), v);
            left = hash ? strtol(hash + 1, NULL, 10) : 1;
            if (left < 1) left = 1;
        }
    }
    if (armed[0] && strcmp(step, armed) == 0 && --left == 0) kill(getpid(), SIGKILL);
}
