"""One progress line for long loops a user waits on (downloads, INT8 calibration): done of a
total, the rate and the ETA, rewritten in place on a terminal and printed every 10 % (and at the
end) otherwise, so a log reads the same."""
import sys
import time


class Progress:
    """``update(done)`` as work goes on, ``update(done, final=True)`` at the end. ``unit`` and
    ``scale`` say how ``done`` is shown (bytes as "MB" with scale 2**20, images as "images")."""

    def __init__(self, label: str, total: int, start: int = 0, unit: str = "",
                 scale: float = 1.0, digits: int = 0):
        self.label, self.total, self.start, self.began = label, total, start, time.time()
        self.unit, self.scale, self.digits = unit, scale, digits
        self.tty, self.shown = sys.stdout.isatty(), -1

    def _number(self, value: float) -> str:
        return f"{value / self.scale:.{self.digits}f}"

    def update(self, done: int, final: bool = False) -> None:
        elapsed = max(time.time() - self.began, 1e-6)
        rate = (done - self.start) / elapsed
        share = done / self.total if self.total else 0.0
        if not (self.tty or final or int(share * 10) > self.shown):
            return
        self.shown = int(share * 10)
        eta = f", eta {(self.total - done) / rate:.0f} s" if rate > 0 and self.total else ""
        of = f" of {self._number(self.total)}" if self.total else ""
        percent = f" ({share:.0%})" if self.total else ""
        line = (f"{self.label}: {self._number(done)}{of} {self.unit}{percent}, "
                f"{rate / self.scale:.1f} {self.unit or 'items'}/s{eta}")
        print(("\r" + line if self.tty else line) + ("\n" if final and self.tty else ""),
              end="" if self.tty else "\n", flush=True)
