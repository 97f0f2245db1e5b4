/* loss.svg: train and validation loss curves as a standalone SVG file. */
#ifndef FY_PLOT_H
#define FY_PLOT_H

#include "core/err.h"

typedef struct fy_series {
    const char *label, *color;
    const double *x, *y;
    int n;
} fy_series;

/* Writes an SVG line chart (atomic replace). Non-finite points are skipped. */
int fy_plot_svg(const char *path, const char *title, const fy_series *s, int n_series, fy_err *err);

#endif
