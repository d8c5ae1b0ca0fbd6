package tbprom

import (
	"os"
	"strings"
	"testing"

	"github.com/thingsgate/tbgateway"
)

// TestStateLabels: the state labels are the states' names.
func TestStateLabels(t *testing.T) {
	for _, st := range states {
		if st.Label != st.State.String() {
			t.Errorf("state label %q for %v", st.Label, st.State)
		}
	}
}

func TestHistogram(t *testing.T) {
	h := tbgateway.Histogram{
		Bounds: tbgateway.AckLatencyBounds(),
		Counts: make([]uint64, len(tbgateway.AckLatencyBounds())+1),
	}
	h.Counts[0], h.Counts[3], h.Counts[len(h.Counts)-1] = 2, 5, 1
	h.Sum = 1500 * 1e6 // 1.5 s
	count, sum, buckets := histogram(h)
	if count != 8 || sum != 1.5 {
		t.Fatalf("count %d sum %v, want 8 1.5", count, sum)
	}
	if len(buckets) != len(h.Bounds) {
		t.Fatalf("%d buckets, want %d", len(buckets), len(h.Bounds))
	}
	want := map[float64]uint64{0.001: 2, 0.0025: 2, 0.005: 2, 0.01: 7, 10: 7}
	for le, n := range want {
		if buckets[le] != n {
			t.Errorf("bucket le=%v: %d, want %d", le, buckets[le], n)
		}
	}
	if _, _, b := histogram(tbgateway.Histogram{}); len(b) != 0 {
		t.Errorf("empty histogram: %v", b)
	}
}

// TestDocListsMetrics keeps the package documentation's list of names true.
func TestDocListsMetrics(t *testing.T) {
	src, err := os.ReadFile("tbprom.go")
	if err != nil {
		t.Fatal(err)
	}
	doc := strings.Join(strings.Fields(strings.ReplaceAll(string(src), "//", " ")), " ")
	names := []string{"connection_state", "ack_latency_seconds"}
	for _, m := range tbgateway.StatsMetrics() {
		names = append(names, metricName(m))
	}
	for _, n := range names {
		if !strings.Contains(doc, "tbgateway_"+n+" ") && !strings.Contains(doc, "tbgateway_"+n+",") {
			t.Errorf("the package doc does not list tbgateway_%s", n)
		}
	}
}
