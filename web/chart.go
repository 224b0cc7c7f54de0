package web

import (
	"fmt"
	"time"

	"github.com/docketq/docket"
)

// chart is the overview's throughput over the last hour: one bar per
// minute, successes stacked under failures, drawn as SVG on the server.
type chart struct {
	Bars              []bar
	Max               int64
	Succeeded, Failed int64
	Width, Height     int
}

type bar struct {
	X, W          int
	OKY, OKH      int // the successes' rectangle
	FailY, FailH  int // the failures' rectangle, above it
	Label         string
	OK, Fail      int64
	Minute        time.Time
	HasAnyOutcome bool
}

const (
	chartMinutes = 60
	chartWidth   = 600
	chartHeight  = 80
)

// throughput sums the per-minute outcomes of every queue over the hour
// before now.
func throughput(history []docket.MinuteStats, now time.Time) chart {
	c := chart{Width: chartWidth, Height: chartHeight}
	start := now.UTC().Truncate(time.Minute).Add(-(chartMinutes - 1) * time.Minute)
	ok := make([]int64, chartMinutes)
	fail := make([]int64, chartMinutes)
	for _, m := range history {
		i := int(m.Minute.Sub(start) / time.Minute)
		if i < 0 || i >= chartMinutes {
			continue
		}
		ok[i] += m.Succeeded
		fail[i] += m.Failed
	}
	for i := range chartMinutes {
		c.Succeeded += ok[i]
		c.Failed += fail[i]
		c.Max = max(c.Max, ok[i]+fail[i])
	}
	w := chartWidth / chartMinutes
	for i := range chartMinutes {
		b := bar{X: i * w, W: w - 1, OK: ok[i], Fail: fail[i], Minute: start.Add(time.Duration(i) * time.Minute)}
		if c.Max > 0 {
			b.OKH = int(ok[i] * chartHeight / c.Max)
			b.FailH = int(fail[i] * chartHeight / c.Max)
			if ok[i] > 0 && b.OKH == 0 {
				b.OKH = 1
			}
			if fail[i] > 0 && b.FailH == 0 {
				b.FailH = 1
			}
		}
		b.OKY = chartHeight - b.OKH
		b.FailY = b.OKY - b.FailH
		b.HasAnyOutcome = ok[i]+fail[i] > 0
		b.Label = fmt.Sprintf("%s UTC: %d succeeded, %d failed", b.Minute.Format("15:04"), ok[i], fail[i])
		c.Bars = append(c.Bars, b)
	}
	return c
}
