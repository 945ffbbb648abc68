"""Minimal PNG plots with the Python standard library only (shared by
tools/datagen/report.py and tools/evaluate.py).

A Canvas is an RGB pixel grid with filled rectangles and text in a 3x5 bitmap
font (digits, letters, a few signs; our own glyphs), encoded as PNG with zlib.
On it: histogram() (bar chart of binned values) and cdf_plot() (empirical
cumulative distributions as step curves).
"""

import os
import struct
import zlib

BLACK = (0, 0, 0)
GREY = (170, 170, 170)
BLUE = (40, 90, 200)
ORANGE = (200, 90, 40)

FONT = {  # 3x5 bitmap glyphs, rows top to bottom
    "0": ["111", "101", "101", "101", "111"], "1": ["010", "110", "010", "010", "111"],
    "2": ["111", "001", "111", "100", "111"], "3": ["111", "001", "111", "001", "111"],
    "4": ["101", "101", "111", "001", "001"], "5": ["111", "100", "111", "001", "111"],
    "6": ["111", "100", "111", "101", "111"], "7": ["111", "001", "010", "010", "010"],
    "8": ["111", "101", "111", "101", "111"], "9": ["111", "101", "111", "001", "111"],
    "-": ["000", "000", "111", "000", "000"], ".": ["000", "000", "000", "000", "010"],
    " ": ["000", "000", "000", "000", "000"],
    "A": ["010", "101", "111", "101", "101"], "B": ["110", "101", "110", "101", "110"],
    "C": ["011", "100", "100", "100", "011"], "D": ["110", "101", "101", "101", "110"],
    "E": ["111", "100", "110", "100", "111"], "F": ["111", "100", "110", "100", "100"],
    "G": ["011", "100", "101", "101", "011"], "H": ["101", "101", "111", "101", "101"],
    "I": ["111", "010", "010", "010", "111"], "J": ["001", "001", "001", "101", "010"],
    "K": ["101", "101", "110", "101", "101"], "L": ["100", "100", "100", "100", "111"],
    "M": ["101", "111", "111", "101", "101"], "N": ["110", "101", "101", "101", "101"],
    "O": ["010", "101", "101", "101", "010"], "P": ["110", "101", "110", "100", "100"],
    "Q": ["010", "101", "101", "110", "011"], "R": ["110", "101", "110", "101", "101"],
    "S": ["011", "100", "010", "001", "110"], "T": ["111", "010", "010", "010", "010"],
    "U": ["101", "101", "101", "101", "111"], "V": ["101", "101", "101", "101", "010"],
    "W": ["101", "101", "111", "111", "101"], "X": ["101", "101", "010", "101", "101"],
    "Y": ["101", "101", "010", "010", "010"], "Z": ["111", "001", "010", "100", "111"],
    "(": ["010", "100", "100", "100", "010"], ")": ["010", "001", "001", "001", "010"],
    "/": ["001", "001", "010", "100", "100"], "<": ["001", "010", "100", "010", "001"],
    ">": ["100", "010", "001", "010", "100"], "=": ["000", "111", "000", "111", "000"],
    "%": ["101", "001", "010", "100", "101"], ":": ["000", "010", "000", "010", "000"],
    "+": ["000", "010", "111", "010", "000"], ",": ["000", "000", "000", "010", "100"],
}


def text_width(s, scale=2):
    """Width in pixels of s drawn by Canvas.text (4 columns per glyph)."""
    return 4 * scale * len(s)


class Canvas:
    def __init__(self, w, h):
        self.w, self.h = w, h
        self.px = [[(255, 255, 255)] * w for _ in range(h)]

    def rect(self, x0, y0, x1, y1, c):
        """Fills [x0, x1) x [y0, y1) (corners in any order), clipped to the canvas."""
        for y in range(max(0, min(y0, y1)), min(self.h, max(y0, y1))):
            row = self.px[y]
            for x in range(max(0, min(x0, x1)), min(self.w, max(x0, x1))):
                row[x] = c

    def text(self, x, y, s, c=BLACK, scale=2):
        """Draws s with its top left corner at (x, y); letters in upper case, unknown
        characters as blanks."""
        for ch in s:
            g = FONT.get(ch.upper(), FONT[" "])
            for r, bits in enumerate(g):
                for k, b in enumerate(bits):
                    if b == "1":
                        self.rect(x + k * scale, y + r * scale, x + (k + 1) * scale, y + (r + 1) * scale, c)
            x += 4 * scale

    def png(self):
        raw = b"".join(b"\x00" + bytes(v for p in row for v in p) for row in self.px)

        def chunk(t, d):
            return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", self.w, self.h, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))

    def save(self, path):
        """Writes the PNG to path through a temporary file renamed into place."""
        tmp = "%s.tmp.%d" % (path, os.getpid())
        with open(tmp, "wb") as f:
            f.write(self.png())
        os.replace(tmp, path)


def histogram(cv, x0, y0, w, h, values, lo, hi, nbins, color, tick_every):
    """Bar chart of values in nbins bins over [lo, hi) (values outside go to the end
    bins) in the box at (x0, y0) of size w x h; x ticks every tick_every bins, the
    largest count at the top of the y axis. Returns the bin counts."""
    counts = [0] * nbins
    for v in values:
        k = int((v - lo) / (hi - lo) * nbins)
        if 0 <= k < nbins:
            counts[k] += 1
        elif k >= nbins:
            counts[-1] += 1
        else:
            counts[0] += 1
    top = max(counts + [1])
    bw = w // nbins
    for k, c in enumerate(counts):
        bh = int(round(h * c / float(top)))
        cv.rect(x0 + k * bw + 1, y0 + h - bh, x0 + (k + 1) * bw - 1, y0 + h, color)
    cv.rect(x0, y0 + h, x0 + nbins * bw, y0 + h + 2, BLACK)      # x axis
    cv.rect(x0 - 2, y0, x0, y0 + h + 2, BLACK)                     # y axis
    for k in range(0, nbins + 1, tick_every):
        lab = "%g" % (lo + (hi - lo) * k / nbins)
        cv.rect(x0 + k * bw, y0 + h, x0 + k * bw + 1, y0 + h + 6, BLACK)
        cv.text(x0 + k * bw - 4 * len(lab), y0 + h + 10, lab)
    cv.text(x0 - 12 - 8 * len(str(top)), y0, str(top))                # y max count
    cv.text(x0 - 20, y0 + h - 8, "0")
    return counts


def axes(cv, x0, y0, w, h, px, py, xticks, yticks, xlabel, ylabel, series):
    """Axes of the box at (x0, y0), w x h: ticks (position, label) through the maps px
    and py, axis labels, and a legend (colour and label of each series) above the box,
    right-aligned."""
    cv.rect(x0, y0 + h, x0 + w, y0 + h + 2, BLACK)                 # x axis
    cv.rect(x0 - 2, y0, x0, y0 + h + 2, BLACK)                     # y axis
    for x, lab in xticks:
        cv.rect(px(x), y0 + h, px(x) + 1, y0 + h + 6, BLACK)
        cv.text(px(x) - text_width(lab) // 2, y0 + h + 10, lab)
    for y, lab in yticks:
        cv.rect(x0 - 6, py(y), x0, py(y) + 1, BLACK)
        cv.text(x0 - 10 - text_width(lab), py(y) - 5, lab)
    if xlabel:
        cv.text(x0 + (w - text_width(xlabel)) // 2, y0 + h + 28, xlabel)
    if ylabel:
        cv.text(x0 - 10 - text_width(ylabel), y0 - 18, ylabel)
    lx = x0 + w
    for item in reversed(series):
        color, label = item[1], item[2]
        lx -= text_width(label) + 30
        cv.rect(lx, y0 - 18, lx + 20, y0 - 8, color)
        cv.text(lx + 26, y0 - 18, label)


def cdf_plot(cv, x0, y0, w, h, series, xmax, xticks, marks=(), xlabel="", ylabel=""):
    """Empirical cumulative distributions in the box at (x0, y0) of size w x h.

    series: list of (values, color, label[, line width, default 3]); each is drawn as
    a step curve from 0 to the fraction of its values <= x, for x in [0, xmax]
    (values beyond xmax keep the curve below 1 at the right edge); draw a wide curve
    first and a narrow one over it to keep both visible where they coincide. xticks: x positions labelled on the axis;
    marks: x positions of light vertical guide lines; y is labelled 0, 0.5, 1 with
    light guides. A legend (colour and label) goes above the box, right-aligned."""
    def px(x):
        return x0 + int(round(w * min(max(x, 0.0), xmax) / xmax))

    def py(f):
        return y0 + h - int(round(h * f))

    for f in (0.25, 0.5, 0.75, 1.0):                               # guides
        cv.rect(x0, py(f), x0 + w, py(f) + 1, GREY)
    for m in marks:
        if 0 < m < xmax:
            cv.rect(px(m), y0, px(m) + 1, y0 + h, GREY)
    for item in series:
        values, color = item[0], item[1]
        lw = item[3] if len(item) > 3 else 3
        v = sorted(values)
        n = len(v)
        if not n:
            continue
        a, b = lw // 2, lw - lw // 2           # line from pixel - a to pixel + b
        x_prev, f_prev = 0, 0.0
        for i, x in enumerate(v):
            if x > xmax:
                break
            f = (i + 1) / float(n)
            cv.rect(px(x_prev) - a, py(f_prev) - a, px(x) + b, py(f_prev) + b, color)  # flat
            cv.rect(px(x) - a, py(f) - a, px(x) + b, py(f_prev) + b, color)            # rise
            x_prev, f_prev = x, f
        cv.rect(px(x_prev) - a, py(f_prev) - a, x0 + w, py(f_prev) + b, color)
    axes(cv, x0, y0, w, h, px, py, [(x, "%g" % x) for x in xticks],
         [(0.0, "0"), (0.5, "0.5"), (1.0, "1")], xlabel, ylabel, series)


def line_plot(cv, x0, y0, w, h, series, xmax, ymax, xticks, yticks, xlabel="", ylabel=""):
    """Curves y(x) in the box at (x0, y0) of size w x h, x in [0, xmax], y in [0, ymax]
    (values above ymax are drawn at the top edge). series: list of (points, color,
    label[, line width, default 3]), points a list of (x, y) in increasing x, joined by
    straight segments. xticks, yticks: labelled positions (with light guides for y).
    A legend goes above the box, right-aligned, as in cdf_plot."""
    def px(x):
        return x0 + int(round(w * min(max(x, 0.0), xmax) / xmax))

    def py(y):
        return y0 + h - int(round(h * min(max(y, 0.0), ymax) / ymax))

    for y in yticks:                                               # guides
        cv.rect(x0, py(y), x0 + w, py(y) + 1, GREY)
    for item in series:
        pts, color = item[0], item[1]
        lw = item[3] if len(item) > 3 else 3
        ms = item[4] if len(item) > 4 else 0
        a, b = lw // 2, lw - lw // 2
        for x, y in pts if ms else ():
            cv.rect(px(x) - ms, py(y) - ms, px(x) + ms, py(y) + ms, color)
        for (xa, ya), (xb, yb) in zip(pts, pts[1:]):
            n = max(abs(px(xb) - px(xa)), abs(py(yb) - py(ya)), 1)
            for k in range(n + 1):                                 # a segment as dots
                x = px(xa + (xb - xa) * k / float(n))
                y = py(ya + (yb - ya) * k / float(n))
                cv.rect(x - a, y - a, x + b, y + b, color)
    axes(cv, x0, y0, w, h, px, py, [(x, "%g" % x) for x in xticks], [(y, "%g" % y) for y in yticks],
         xlabel, ylabel, series)
