/* Clocks: fy_now_s for measuring intervals (monotonic: never jumps with the
 * system clock), fy_wall_s for timestamps people read (seconds since the
 * epoch). Nothing here sleeps or keeps state. */
#ifndef FY_CLOCK_H
#define FY_CLOCK_H

double fy_now_s(void);
double fy_wall_s(void);

#endif
