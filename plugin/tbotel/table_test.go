package tbotel

import (
	"os"
	"strings"
	"testing"

	"github.com/thingsgate/tbgateway"
)

// TestStateLabels: the state labels are the states' names.
func TestStateLabels(t *testing.T) {
	for _, st := range states {
		if st.label != st.state.String() {
			t.Errorf("state label %q for %v", st.label, st.state)
		}
	}
}

// TestDocListsInstruments keeps the package documentation's list of names
// true.
func TestDocListsInstruments(t *testing.T) {
	src, err := os.ReadFile("tbotel.go")
	if err != nil {
		t.Fatal(err)
	}
	doc := strings.Join(strings.Fields(strings.ReplaceAll(string(src), "//", " ")), " ")
	names := []string{"connection_state", "ack_latency.count", "ack_latency.sum", "ack_latency.bucket"}
	for _, m := range tbgateway.StatsMetrics() {
		names = append(names, m.Name)
	}
	for _, n := range names {
		if !strings.Contains(doc, "tbgateway."+n+" ") && !strings.Contains(doc, "tbgateway."+n+",") {
			t.Errorf("the package doc does not list tbgateway.%s", n)
		}
	}
}

func TestCumulative(t *testing.T) {
	h := tbgateway.Histogram{Bounds: tbgateway.AckLatencyBounds(), Counts: make([]uint64, len(tbgateway.AckLatencyBounds())+1)}
	h.Counts[0], h.Counts[3], h.Counts[len(h.Counts)-1] = 2, 5, 1
	c := cumulative(h)
	if len(c) != len(h.Bounds)+1 || c[0] != 2 || c[2] != 2 || c[3] != 7 || c[len(c)-2] != 7 || c[len(c)-1] != 8 {
		t.Errorf("cumulative %v", c)
	}
	if c := cumulative(tbgateway.Histogram{}); len(c) != 1 || c[0] != 0 {
		t.Errorf("empty: %v", c)
	}
}
