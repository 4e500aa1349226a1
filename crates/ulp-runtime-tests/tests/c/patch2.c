/* Live patch 2 for target.c: replaces answer() again, to stack on patch 1. */
int new_answer2(void) { return 43; }
