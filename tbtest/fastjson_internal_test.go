package tbtest

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// slowTelemetry is what the general path stores for a payload it accepts
// whole: per device, in order, its points; ok is false for any payload
// the general path refuses or handles otherwise in part.
func slowTelemetry(b []byte, nowMs int64) ([]string, [][]tsPoint, bool) {
	if !validJSON(b) {
		return nil, nil, false
	}
	list, err := members(b)
	if err != nil || len(list) == 0 {
		return nil, nil, false
	}
	var names []string
	var pts [][]tsPoint
	for _, m := range list {
		items, err := elements(m.val)
		if err != nil || len(items) == 0 {
			return nil, nil, false
		}
		p, _, err := convertTelemetry(items, nowMs)
		if err != nil {
			return nil, nil, false
		}
		names = append(names, m.key)
		pts = append(pts, p)
	}
	return names, pts, true
}

// checkFast requires that whatever the fast parser accepts, the general
// path accepts too and stores the same points.
func checkFast(t *testing.T, payload []byte) bool {
	t.Helper()
	const now = 1234
	var fp fastParser
	if !fp.telemetry(payload, now) {
		return false
	}
	names, pts, ok := slowTelemetry(payload, now)
	require.True(t, ok, "the general path refuses %q", payload)
	require.Len(t, fp.devices, len(names), "%q", payload)
	for i, d := range fp.devices {
		require.Equal(t, names[i], string(d.name))
		got := fp.points[d.from:d.to]
		require.Len(t, got, len(pts[i]), "%q", payload)
		for j, p := range got {
			want := pts[i][j]
			require.Equal(t, want.key, string(p.key), "%q", payload)
			require.Equal(t, want.ts, p.ts, "%q", payload)
			require.Equal(t, want.v.any(), p.v.any(), "%q: key %s", payload, want.key)
		}
	}
	return true
}

var fastSeeds = []struct {
	payload string
	fast    bool
}{
	{`{"Device A":[{"ts":1483228800000,"values":{"temperature":42,"humidity":80}},{"ts":1483228801000,"values":{"temperature":43,"humidity":82}}],"Device B":[{"ts":1483228800000,"values":{"temperature":42,"humidity":80}}]}`, true},
	{` { "A" : [ { "values" : { "a" : -0.5 , "b" : true, "c": false, "d": null, "e": "text", "f": "" } , "ts" : -7 } ] } `, true},
	{`{"A":[{"a":1,"b":2.25}],"B":[{}]}`, true},
	{`{"A":[{"ts":1,"values":{}}]}`, true},
	{`{"A":[{"ts":1,"values":{"j":{"x":[1, 2, {"y": "\u00e9"}]},"k":[ ]}}]}`, true},
	{`{"Ünïcode":[{"ts":1,"values":{"ключ":"значение"}}]}`, true},
	{`{"A":[{"ts":1,"values":{"n":-0,"m":0,"big":123456789012345678,"f":0.1234567890123456,"neg":-12.5}}]}`, true},
	// The general path's cases.
	{`{"A":[{"ts":1,"values":{"big":1234567890123456789}}]}`, false},
	{`{"A":[{"ts":1,"values":{"e":1e5}}]}`, false},
	{`{"A":[{"ts":1,"values":{"f":0.12345678901234567}}]}`, false},
	{`{"A":[{"ts":1,"values":{"s":"42"}}]}`, false},
	{`{"A":[{"ts":1,"values":{"s":"a\"b"}}]}`, false},
	{`{"A":[{"ts":1,"values":{"a":1,"a":2}}]}`, false},
	{`{"A":[{"ts":1,"values":{"a":1}}],"A":[{"ts":2,"values":{"a":2}}]}`, false},
	{`{"A":[{"values":{"t":1}}]}`, false},
	{`{"A":[{"ts":1,"t":2}]}`, false},
	{`{"A":[{"ts":"1","values":{"t":2}}]}`, false},
	{`{"A":[{"ts":1.5,"values":{"t":2}}]}`, false},
	{`{"A":[{"ts":1,"values":{"t":2},"x":3}]}`, false},
	{`{"A":[{"t":1,"metadata":{"connector":"c","receivedTs":1,"publishedTs":2}}]}`, false},
	{`{"A":[]}`, false},
	{`{"A":{"t":1}}`, false},
	{`{"A":[1]}`, false},
	{`{}`, false},
	{`[]`, false},
	{``, false},
	{`{"A":[{"t":01}]}`, false},
	{`{"A":[{"t":NaN}]}`, false},
	{`{"A":[{"t":1}]} x`, false},
	{`{"A":[{"t":1},]}`, false},
	{"{\"A\":[{\"t\":\"\xff\"}]}", false},
	{`{"A":[{"t":1.}]}`, false},
}

func TestFastTelemetry(t *testing.T) {
	for _, c := range fastSeeds {
		assert.Equal(t, c.fast, checkFast(t, []byte(c.payload)), "fast path for %s", c.payload)
	}
	// The shared vectors.
	var vs []struct{ Topic, Payload string }
	b, err := os.ReadFile(filepath.Join("testdata", "vectors", "uplink.json"))
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(b, &vs))
	fast := 0
	for _, v := range vs {
		if v.Topic == topicTelemetry && checkFast(t, []byte(v.Payload)) {
			fast++
		}
	}
	assert.Equal(t, 3, fast, "telemetry vectors without metadata take the fast path")
}

// A large payload of the SDK's shape takes the fast path.
func TestFastTelemetryLarge(t *testing.T) {
	var sb strings.Builder
	sb.WriteString("{")
	for d := range 20 {
		if d > 0 {
			sb.WriteString(",")
		}
		fmt.Fprintf(&sb, `"Device %04d":[`, d)
		for i := range 50 {
			if i > 0 {
				sb.WriteString(",")
			}
			fmt.Fprintf(&sb, `{"ts":%d,"values":{"k0":%g,"k1":%d,"k2":"s%d"}}`, 1700000000000+i, float64(i)/4+0.125, i*7, i)
		}
		sb.WriteString("]")
	}
	sb.WriteString("}")
	require.True(t, checkFast(t, []byte(sb.String())))
}

// FuzzFastTelemetry checks that the fast path never disagrees with the
// general one.
func FuzzFastTelemetry(f *testing.F) {
	for _, c := range fastSeeds {
		f.Add([]byte(c.payload))
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		checkFast(t, payload)
	})
}
