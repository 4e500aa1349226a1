/* A live patch for a function of the harness program itself. */
int new_prog_value(void) { return 6; }
