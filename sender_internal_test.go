package tbgateway

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/thingsgate/tbgateway/internal/ratelimit"
)

// TestRateLimitMargin: the sender's buckets hold the margin's share of
// every limit window's capacity (at least one), for the limits given by
// option and for those the server reports later; the largest message the
// splitting allows follows. No clock is involved: the capacities are read,
// not measured.
func TestRateLimitMargin(t *testing.T) {
	limits := RateLimits{Messages: "100:1,1000:60", TelemetryMessages: "10:1", TelemetryDataPoints: "50:1"}
	reported := SessionLimits{
		RateLimits:        RateLimits{Messages: "40:1"},
		GatewayRateLimits: RateLimits{Messages: "40:1", TelemetryDataPoints: "200:1"},
	}
	type bursts struct{ messages, telemetry, points, reportedMessages, reportedPoints int }
	for _, c := range []struct {
		name string
		opts []Option
		want bursts
	}{
		{"default 0.9", nil, bursts{90, 9, 45, 36, 180}},
		{"half", []Option{WithRateLimitMargin(0.5)}, bursts{50, 5, 25, 20, 100}},
		{"whole", []Option{WithRateLimitMargin(1)}, bursts{100, 10, 50, 40, 200}},
		{"tiny: one token at least", []Option{WithRateLimitMargin(0.001)}, bursts{1, 1, 1, 1, 1}},
	} {
		t.Run(c.name, func(t *testing.T) {
			o, _, err := parseDialOptions("tcp://127.0.0.1:1883", append([]Option{WithRateLimits(limits, limits)}, c.opts...))
			require.NoError(t, err)
			g := &Gateway{opts: o, log: o.logger}
			s := newSender(g)
			g.out = s
			for name, b := range map[string]*ratelimit.Bucket{"gateway": s.gwBucket, "own": s.ownBucket} {
				// The smallest window decides: 100:1 rather than 1000:60.
				assert.Equal(t, c.want.messages, b.MaxCost(ratelimit.KindMessages), name)
				assert.Equal(t, c.want.telemetry, b.MaxCost(ratelimit.KindTelemetryMessages), name)
				assert.Equal(t, c.want.points, b.MaxDataPoints(), name)
			}
			assert.Equal(t, c.want.points, s.limit().maxPoints, "a batch is split to what one message can carry")

			s.applyLimits(reported)
			assert.Equal(t, c.want.reportedMessages, s.ownBucket.MaxCost(ratelimit.KindMessages))
			assert.Equal(t, c.want.reportedMessages, s.gwBucket.MaxCost(ratelimit.KindMessages))
			assert.Equal(t, c.want.reportedPoints, s.gwBucket.MaxDataPoints())
			assert.Zero(t, s.gwBucket.MaxCost(ratelimit.KindTelemetryMessages), "a limit the server no longer reports is gone")
			assert.Equal(t, c.want.reportedPoints, s.limit().maxPoints)
		})
	}
}

// TestRateLimitMarginRefused: a margin outside (0, 1] is refused, so that a
// typo cannot switch pacing off or let the gateway use more than the
// server allows.
func TestRateLimitMarginRefused(t *testing.T) {
	for _, m := range []float64{0, -0.1, 1.0001, 2} {
		_, _, err := parseDialOptions("tcp://127.0.0.1:1883", []Option{WithRateLimitMargin(m)})
		assert.ErrorIs(t, err, ErrInvalidOption, "margin %v", m)
	}
	for _, m := range []float64{1, 0.5, 1e-9} {
		o, _, err := parseDialOptions("tcp://127.0.0.1:1883", []Option{WithRateLimitMargin(m)})
		require.NoError(t, err, "margin %v", m)
		assert.Equal(t, m, o.rateMargin)
	}
}
