/* The target library of the runtime's tests: functions to replace (one of
   them static), a static and a thread-local variable for references. */
static int counter;
static __thread int tcounter;

int get_counter(void) { return counter; }
int get_tcounter(void) { return tcounter; }
int answer(void) { return 41; }
int bump(void) { counter++; tcounter++; return counter; }

static __attribute__((noipa)) int secret(void) { return 7; }
int call_secret(void) { return secret() * 2; }
