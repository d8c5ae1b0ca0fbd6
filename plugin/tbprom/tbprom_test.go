package tbprom_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/thingsgate/tbgateway"
	"github.com/thingsgate/tbgateway/plugin/tbprom"
	"github.com/thingsgate/tbgateway/tbtest"
)

// dial connects a gateway to a fresh fake server and publishes n telemetry
// entries, each waited for.
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
	// Wait until nothing is queued or in flight, so that one scrape sees
	// settled counters.
	deadline := time.Now().Add(5 * time.Second)
	for s := g.Stats(); s.Queued > 0 || s.InFlight > 0 || s.AckLatency.Count < s.Acknowledged; s = g.Stats() {
		if time.Now().After(deadline) {
			t.Fatalf("not settled: %+v", s)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return g
}

func gather(t *testing.T, c prometheus.Collector) map[string]*dto.MetricFamily {
	t.Helper()
	reg := prometheus.NewPedanticRegistry() // also checks Describe against Collect
	reg.MustRegister(c)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

func TestCollect(t *testing.T) {
	g := dial(t, 3)
	c := tbprom.NewCollector(g)
	mfs := gather(t, c)

	for _, name := range []string{"tbgateway_accepted_total", "tbgateway_published_total", "tbgateway_acknowledged_total", "tbgateway_data_points_total"} {
		mf := mfs[name]
		if mf == nil {
			t.Fatalf("no %s", name)
		}
		if mf.GetType() != dto.MetricType_COUNTER {
			t.Errorf("%s is a %v", name, mf.GetType())
		}
		if v := mf.Metric[0].GetCounter().GetValue(); v < 3 {
			t.Errorf("%s = %v, want ≥ 3 after 3 publishes", name, v)
		}
	}
	for _, name := range []string{"tbgateway_handler_dropped_total", "tbgateway_reconnects_total", "tbgateway_duplicate_rpcs_total"} {
		if mf := mfs[name]; mf == nil || mf.Metric[0].GetCounter().GetValue() != 0 {
			t.Errorf("%s: %v, want 0", name, mf)
		}
	}
	for _, name := range []string{"tbgateway_queue_depth_records", "tbgateway_queue_depth_bytes", "tbgateway_in_flight_messages"} {
		mf := mfs[name]
		if mf == nil || mf.GetType() != dto.MetricType_GAUGE {
			t.Fatalf("%s: %v", name, mf)
		}
		if v := mf.Metric[0].GetGauge().GetValue(); v != 0 {
			t.Errorf("%s = %v, want 0 once everything is acknowledged", name, v)
		}
	}

	state := map[string]float64{}
	for _, m := range mfs["tbgateway_connection_state"].GetMetric() {
		state[m.GetLabel()[0].GetValue()] = m.GetGauge().GetValue()
	}
	if want := map[string]float64{"up": 1, "down": 0, "reconnecting": 0}; len(state) != 3 || state["up"] != 1 || state["down"] != 0 || state["reconnecting"] != 0 {
		t.Errorf("connection_state %v, want %v", state, want)
	}

	h := mfs["tbgateway_ack_latency_seconds"]
	if h == nil || h.GetType() != dto.MetricType_HISTOGRAM {
		t.Fatalf("ack_latency_seconds: %v", h)
	}
	hist := h.Metric[0].GetHistogram()
	acked := mfs["tbgateway_acknowledged_total"].Metric[0].GetCounter().GetValue()
	if float64(hist.GetSampleCount()) != acked {
		t.Errorf("histogram count %d, acknowledged %v", hist.GetSampleCount(), acked)
	}
	if hist.GetSampleSum() <= 0 {
		t.Errorf("histogram sum %v", hist.GetSampleSum())
	}
	if n := len(hist.GetBucket()); n != len(tbgateway.AckLatencyBounds()) {
		t.Errorf("%d buckets, want %d", n, len(tbgateway.AckLatencyBounds()))
	}
	prev := uint64(0)
	for _, b := range hist.GetBucket() {
		if b.GetCumulativeCount() < prev || b.GetCumulativeCount() > hist.GetSampleCount() {
			t.Errorf("bucket le=%v: %d not cumulative", b.GetUpperBound(), b.GetCumulativeCount())
		}
		prev = b.GetCumulativeCount()
	}
	if hist.GetBucket()[0].GetUpperBound() != 0.001 {
		t.Errorf("first bound %v, want 0.001 s", hist.GetBucket()[0].GetUpperBound())
	}

	// Every metric once, and no label but state: no per-device labels.
	want := len(tbgateway.AckLatencyBounds()) // just a sanity floor
	if n := testutil.CollectAndCount(c); n < want {
		t.Errorf("%d metrics", n)
	}
	for name, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() != "state" {
					t.Errorf("%s has label %s", name, l.GetName())
				}
			}
		}
	}

	// Prometheus' own naming rules (counters end in _total, base units...).
	problems, err := testutil.CollectAndLint(c)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}

func TestCollectAndCompare(t *testing.T) {
	g := dial(t, 1)
	c := tbprom.NewCollector(g)
	err := testutil.CollectAndCompare(c, strings.NewReader(`
# HELP tbgateway_connection_state The connection's state: 1 for the current state, 0 for the others.
# TYPE tbgateway_connection_state gauge
tbgateway_connection_state{state="down"} 0
tbgateway_connection_state{state="reconnecting"} 0
tbgateway_connection_state{state="up"} 1
# HELP tbgateway_handler_dropped_total Received messages dropped because a handler queue was full.
# TYPE tbgateway_handler_dropped_total counter
tbgateway_handler_dropped_total 0
`), "tbgateway_connection_state", "tbgateway_handler_dropped_total")
	if err != nil {
		t.Error(err)
	}
}

func TestOptionsAndScrape(t *testing.T) {
	g := dial(t, 2)
	reg := prometheus.NewPedanticRegistry()
	// Two collectors of one gateway in one registry, told apart by a
	// constant label.
	reg.MustRegister(tbprom.NewCollector(g,
		tbprom.WithNamespace("plant"), tbprom.WithSubsystem("gw"),
		tbprom.WithConstLabels(prometheus.Labels{"gateway": "line-3"}),
		tbprom.WithConstLabels(prometheus.Labels{"site": "north"})))
	reg.MustRegister(tbprom.NewCollector(g,
		tbprom.WithNamespace("plant"), tbprom.WithSubsystem("gw"),
		tbprom.WithConstLabels(prometheus.Labels{"gateway": "line-4", "site": "north"})))
	hs := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer hs.Close()
	resp, err := http.Get(hs.URL)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape: %v %d", err, resp.StatusCode)
	}
	out := string(body)
	for _, want := range []string{
		"# TYPE plant_gw_published_total counter",
		"# TYPE plant_gw_queue_depth_bytes gauge",
		"# TYPE plant_gw_ack_latency_seconds histogram",
		`plant_gw_connection_state{gateway="line-3",site="north",state="up"} 1`,
		`plant_gw_connection_state{gateway="line-4",site="north",state="up"} 1`,
		`plant_gw_ack_latency_seconds_bucket{gateway="line-3",site="north",le="+Inf"}`,
		`plant_gw_ack_latency_seconds_bucket{gateway="line-3",site="north",le="0.0025"}`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("scrape lacks %q", want)
		}
	}
	if strings.Contains(out, "tbgateway_") {
		t.Error("the default namespace is still used")
	}
	if t.Failed() {
		t.Log(out)
	}
}
