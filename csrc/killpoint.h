/* Named steps of the write paths where a test has the process killed: armed with
 * l2_killpoint_arm (layer2.core.testing.kill_at), or with LAYER2_KILL_AT set to a step's name or
 * to "name#n" (the nth time it is passed, counted from 1), the process sends itself SIGKILL
 * there. What a crash at that step leaves is what the crash specs check. Unset,
 * a step costs one comparison. No Lua here.
 *
 * The steps: save:l2-committed (L2 committed a save, L1 not yet), save:l1-chunk (L1 committed
 * one of a save's transactions, more follow), save:gave-way (a large save's first part is in both
 * levels, its rest not yet: it gave way to a light save), delete:l2-committed, import:batch (a batch of an
 * import committed), drain:l2-took (L2 took an outbox record, not yet acknowledged),
 * catch-up:applied (a replay applied a page of L2's feed to L1, its position not yet moved),
 * gc:evicted (an eviction step committed). */
#ifndef L2_KILLPOINT_H
#define L2_KILLPOINT_H

/* Passes the step: the process is killed here when it is armed and its count is reached. */
void l2_killpoint(const char *step);
/* Arms `step` for its nth pass from now (NULL or "": disarmed); LAYER2_KILL_AT is not read then. */
void l2_killpoint_arm(const char *step, long nth);

#endif
