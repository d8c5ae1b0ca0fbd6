package tbgateway

import (
	"context"
	"time"
)

// WithStatsTelemetry publishes a compact snapshot of Stats as the gateway
// device's own telemetry every d (at least a second), as ThingsBoard's IoT
// Gateway does, so that operators see the queue, the reconnects and the
// drops on a dashboard: queueDepth, queueBytes, inFlight, published,
// acknowledged, resent, reconnects, halfOpen, refused, dropped, expired,
// poisoned, handlerDropped, malformed, and ackLatencyMs, the mean
// acknowledgement latency since the last snapshot. It goes through the
// gateway's own rate-limit bucket like any v1/devices/me/* message; a
// snapshot that finds the queue full is skipped. Off by default.
func WithStatsTelemetry(d time.Duration) Option {
	return func(o *options) error {
		if d < time.Second {
			return invalid("stats telemetry every %v", d)
		}
		o.statsEvery = d
		return nil
	}
}

// statsLoop publishes the snapshots until the gateway closes.
func (g *Gateway) statsLoop() {
	t := time.NewTicker(g.opts.statsEvery)
	defer t.Stop()
	var last Histogram
	for {
		select {
		case <-g.life.done:
			return
		case <-t.C:
		}
		s := g.Stats()
		v := statsValues(s, last)
		last = s.AckLatency
		// Async: a slow server must not make snapshots pile up here.
		ctx, cancel := context.WithTimeout(g.life.ctx, g.opts.statsEvery)
		err := g.self.PublishTelemetryAsync(ctx, []Entry{{TS: time.Now().UnixMilli(), Values: v}}, nil)
		cancel()
		if err != nil && !g.closed() {
			g.log.Debug("tbgateway: stats snapshot skipped", "err", err)
		}
	}
}

// statsValues is the snapshot's telemetry; the latency is the mean of the
// acknowledgements since the one before (prev).
func statsValues(s Stats, prev Histogram) Values {
	v := Values{
		"queueDepth": s.Queued, "queueBytes": s.QueuedBytes, "inFlight": s.InFlight,
		"published": s.Published, "acknowledged": s.Acknowledged, "resent": s.Resent,
		"reconnects": s.Reconnects, "halfOpen": s.HalfOpen, "refused": s.Refused,
		"dropped": s.Dropped, "expired": s.Expired, "poisoned": s.Poisoned,
		"handlerDropped": s.HandlerDropped, "malformed": s.Malformed,
	}
	if n := s.AckLatency.Count - prev.Count; n > 0 {
		mean := (s.AckLatency.Sum - prev.Sum) / time.Duration(n)
		v["ackLatencyMs"] = float64(mean.Microseconds()) / 1000
	}
	return v
}
