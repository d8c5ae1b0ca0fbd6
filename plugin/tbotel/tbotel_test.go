package tbotel_test

import (
	"context"
	"testing"
	"time"

	"github.com/thingsgate/tbgateway"
	"github.com/thingsgate/tbgateway/plugin/tbotel"
	"github.com/thingsgate/tbgateway/tbtest"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// dial connects a gateway to a fresh fake server and publishes n telemetry
// entries, each waited for, then waits until nothing is queued or in
// flight.
func dial(t *testing.T, n int) *tbgateway.Gateway {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	srv := tbtest.NewServer(t)
	g, err := tbgateway.Dial(ctx, srv.URL(), tbgateway.WithAccessToken(tbtest.DefaultToken))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = g.Close(ctx)
	})
	for i := range n {
		if err := g.Device("A").PublishTelemetry(ctx, tbgateway.Entry{Values: tbgateway.Values{"t": i}}); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for s := g.Stats(); s.Queued > 0 || s.InFlight > 0 || s.AckLatency.Count < s.Acknowledged; s = g.Stats() {
		if time.Now().After(deadline) {
			t.Fatalf("not settled: %+v", s)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return g
}

func collect(t *testing.T, r *sdkmetric.ManualReader) map[string]metricdata.Metrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	out := map[string]metricdata.Metrics{}
	for _, sm := range rm.ScopeMetrics {
		if sm.Scope.Name != tbotel.ScopeName {
			t.Errorf("scope %q", sm.Scope.Name)
		}
		for _, m := range sm.Metrics {
			out[m.Name] = m
		}
	}
	return out
}

// sum returns the data points of a cumulative monotonic int64 sum.
func sum(t *testing.T, m metricdata.Metrics) []metricdata.DataPoint[int64] {
	t.Helper()
	s, ok := m.Data.(metricdata.Sum[int64])
	if !ok || !s.IsMonotonic || s.Temporality != metricdata.CumulativeTemporality {
		t.Fatalf("%s: %T %+v, want a cumulative monotonic int64 sum", m.Name, m.Data, m.Data)
	}
	return s.DataPoints
}

func gauge(t *testing.T, m metricdata.Metrics) []metricdata.DataPoint[int64] {
	t.Helper()
	g, ok := m.Data.(metricdata.Gauge[int64])
	if !ok {
		t.Fatalf("%s: %T, want an int64 gauge", m.Name, m.Data)
	}
	return g.DataPoints
}

func attr(dp metricdata.DataPoint[int64], key string) string {
	v, _ := dp.Attributes.Value(attribute.Key(key))
	return v.Emit()
}

func TestRegister(t *testing.T) {
	g := dial(t, 3)
	r := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(r))
	defer mp.Shutdown(context.Background())
	unregister, err := tbotel.Register(g, mp, tbotel.WithAttributes(attribute.String("gateway", "line-3")))
	if err != nil {
		t.Fatal(err)
	}
	ms := collect(t, r)

	for _, name := range []string{"tbgateway.accepted", "tbgateway.published", "tbgateway.acknowledged", "tbgateway.data_points"} {
		dps := sum(t, ms[name])
		if len(dps) != 1 || dps[0].Value < 3 {
			t.Errorf("%s: %+v, want one point ≥ 3", name, dps)
		}
		if attr(dps[0], "gateway") != "line-3" || dps[0].Attributes.Len() != 1 {
			t.Errorf("%s: attributes %v", name, dps[0].Attributes.ToSlice())
		}
	}
	for _, name := range []string{"tbgateway.handler_dropped", "tbgateway.reconnects", "tbgateway.duplicate_rpcs"} {
		if dps := sum(t, ms[name]); len(dps) != 1 || dps[0].Value != 0 {
			t.Errorf("%s: %+v, want 0", name, dps)
		}
	}
	for _, name := range []string{"tbgateway.queue_depth_records", "tbgateway.queue_depth_bytes", "tbgateway.in_flight_messages"} {
		if dps := gauge(t, ms[name]); len(dps) != 1 || dps[0].Value != 0 {
			t.Errorf("%s: %+v, want 0 once everything is acknowledged", name, dps)
		}
	}
	if u := ms["tbgateway.queue_depth_bytes"].Unit; u != "By" {
		t.Errorf("queue_depth_bytes unit %q", u)
	}

	state := map[string]int64{}
	for _, dp := range gauge(t, ms["tbgateway.connection_state"]) {
		state[attr(dp, "state")] = dp.Value
	}
	if len(state) != 3 || state["up"] != 1 || state["down"] != 0 || state["reconnecting"] != 0 {
		t.Errorf("connection_state %v", state)
	}

	acked := sum(t, ms["tbgateway.acknowledged"])[0].Value
	count := sum(t, ms["tbgateway.ack_latency.count"])
	if len(count) != 1 || count[0].Value != acked {
		t.Errorf("ack_latency.count %+v, acknowledged %d", count, acked)
	}
	ls, ok := ms["tbgateway.ack_latency.sum"].Data.(metricdata.Sum[float64])
	if !ok || len(ls.DataPoints) != 1 || ls.DataPoints[0].Value <= 0 || !ls.IsMonotonic {
		t.Errorf("ack_latency.sum %+v", ms["tbgateway.ack_latency.sum"].Data)
	}
	if u := ms["tbgateway.ack_latency.sum"].Unit; u != "s" {
		t.Errorf("ack_latency.sum unit %q", u)
	}
	buckets := map[string]int64{}
	for _, dp := range sum(t, ms["tbgateway.ack_latency.bucket"]) {
		buckets[attr(dp, "le")] = dp.Value
	}
	if len(buckets) != len(tbgateway.AckLatencyBounds())+1 {
		t.Errorf("%d buckets: %v", len(buckets), buckets)
	}
	if buckets["+Inf"] != acked {
		t.Errorf("le=+Inf %d, acknowledged %d", buckets["+Inf"], acked)
	}
	prev := int64(0)
	for _, le := range []string{"0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf"} {
		n, ok := buckets[le]
		if !ok || n < prev {
			t.Errorf("bucket le=%s: %d (present %v), previous %d", le, n, ok, prev)
		}
		prev = n
	}

	// No attribute but the given ones, state and le: no per-device ones.
	for name, m := range ms {
		var sets []attribute.Set
		switch d := m.Data.(type) {
		case metricdata.Sum[int64]:
			for _, dp := range d.DataPoints {
				sets = append(sets, dp.Attributes)
			}
		case metricdata.Gauge[int64]:
			for _, dp := range d.DataPoints {
				sets = append(sets, dp.Attributes)
			}
		case metricdata.Sum[float64]:
			for _, dp := range d.DataPoints {
				sets = append(sets, dp.Attributes)
			}
		default:
			t.Errorf("%s: %T", name, m.Data)
		}
		for _, s := range sets {
			for _, kv := range s.ToSlice() {
				if k := string(kv.Key); k != "gateway" && k != "state" && k != "le" {
					t.Errorf("%s has attribute %s", name, k)
				}
			}
		}
	}

	// A later collection sees later counts: the callback takes a new
	// snapshot each time.
	ctx := context.Background()
	if err := g.Device("A").PublishTelemetry(ctx, tbgateway.Entry{Values: tbgateway.Values{"t": 9}}); err != nil {
		t.Fatal(err)
	}
	if p := sum(t, collect(t, r)["tbgateway.published"])[0].Value; p <= sum(t, ms["tbgateway.published"])[0].Value {
		t.Errorf("published did not grow: %d", p)
	}

	if err := unregister(); err != nil {
		t.Fatal(err)
	}
	for name, m := range collect(t, r) {
		switch d := m.Data.(type) {
		case metricdata.Sum[int64]:
			if len(d.DataPoints) != 0 {
				t.Errorf("%s still reported after unregister", name)
			}
		case metricdata.Gauge[int64]:
			if len(d.DataPoints) != 0 {
				t.Errorf("%s still reported after unregister", name)
			}
		}
	}
}

func TestNamespace(t *testing.T) {
	g := dial(t, 1)
	r := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(r))
	defer mp.Shutdown(context.Background())
	if _, err := tbotel.Register(g, mp, tbotel.WithNamespace("plant.gw")); err != nil {
		t.Fatal(err)
	}
	ms := collect(t, r)
	if _, ok := ms["plant.gw.published"]; !ok {
		t.Errorf("no plant.gw.published in %d metrics", len(ms))
	}
	for name := range ms {
		if len(name) < 9 || name[:9] != "plant.gw." {
			t.Errorf("%s outside the namespace", name)
		}
	}
}
