package tbtest

import (
	"encoding/json"
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestTypeJSON(t *testing.T) {
	cases := []struct {
		in   string
		want any
	}{
		{`true`, true},
		{`false`, false},
		{`"value1"`, "value1"},
		{`""`, ""},
		{`"42"`, int64(42)},
		{`"0123"`, int64(123)},
		{`"-5"`, int64(-5)},
		{`"1.5"`, 1.5},
		{`".5"`, 0.5},
		{`"1."`, "1."},
		{`"-"`, "-"},
		{`"1e5"`, "1e5"},
		{`"+1"`, "+1"},
		{`"1.2.3"`, "1.2.3"},
		{`"99999999999999999999"`, "99999999999999999999"},
		{`73`, int64(73)},
		{`-73`, int64(-73)},
		{`0`, int64(0)},
		{`1E+1`, int64(10)},
		{`4.20E1`, int64(42)},
		{`1.5e3`, int64(1500)},
		{`42.0`, 42.0},
		{`3.0`, 3.0},
		{`0.0`, 0.0},
		{`23.5`, 23.5},
		{`1.5e-3`, 0.0015},
		{`1e-20`, "0.00000000000000000001"},
		{`9223372036854775807`, int64(math.MaxInt64)},
		{`9223372036854775808`, "9223372036854775808"},
		{`1E+30`, "1000000000000000000000000000000"},
		{`0.1234567890123456`, 0.1234567890123456},
		{`0.12345678901234567`, "0.12345678901234567"},
		{`{"a": [1, 2]}`, json.RawMessage(`{"a":[1,2]}`)},
		{`[ ]`, json.RawMessage(`[]`)},
	}
	for _, tc := range cases {
		v, ok, err := typeJSON([]byte(tc.in))
		require.NoError(t, err, tc.in)
		require.True(t, ok, tc.in)
		assert.Equal(t, tc.want, v, tc.in)
	}
	_, ok, err := typeJSON([]byte(`null`))
	assert.NoError(t, err)
	assert.False(t, ok)
}

func TestJavaDouble(t *testing.T) {
	for f, want := range map[float64]string{
		42:       "42.0",
		3:        "3.0",
		0.5:      "0.5",
		23.5:     "23.5",
		0.001:    "0.001",
		0.0001:   "1.0E-4",
		1234567:  "1234567.0",
		1e7:      "1.0E7",
		1.5e20:   "1.5E20",
		-2.5e-10: "-2.5E-10",
		0:        "0.0",
	} {
		assert.Equal(t, want, javaDouble(f), "%v", f)
	}
}

func TestTypeGo(t *testing.T) {
	type S struct {
		A int `json:"a"`
	}
	cases := []struct {
		in   any
		want any
	}{
		{1, int64(1)},
		{int32(-2), int64(-2)},
		{uint64(math.MaxUint64), "18446744073709551615"},
		{42.0, 42.0},
		{float32(0.1), 0.1},
		{"42", "42"},
		{true, true},
		{json.Number("7"), int64(7)},
		{json.RawMessage(`"8"`), int64(8)},
		{S{A: 1}, json.RawMessage(`{"a":1}`)},
		{[]int{1}, json.RawMessage(`[1]`)},
		{math.NaN(), "NaN"},
	}
	for _, tc := range cases {
		v, ok, err := typeGo(tc.in)
		require.NoError(t, err, "%v", tc.in)
		require.True(t, ok)
		assert.Equal(t, tc.want, v, "%#v", tc.in)
	}
	_, ok, _ := typeGo(nil)
	assert.False(t, ok)
	var p *S
	_, ok, _ = typeGo(p)
	assert.False(t, ok)
}

func TestLimiter(t *testing.T) {
	now := timeZero()
	l, err := parseLimit("2:10, 3:60", now)
	require.NoError(t, err)
	assert.True(t, l.tryConsume(1, now))
	assert.True(t, l.tryConsume(1, now))
	assert.False(t, l.tryConsume(1, now), "2 per 10 s")
	later := now.Add(5e9) // +5 s refills one token of the first window
	assert.True(t, l.tryConsume(1, later))
	assert.False(t, l.tryConsume(1, later.Add(5e9)), "3 per 60 s")
	assert.False(t, l.tryConsume(5, later.Add(600e9)), "more than the capacity")

	var unlimited *limiter
	assert.True(t, unlimited.tryConsume(1000, now))
	for _, bad := range []string{"5", "a:1", "1:0", "-1:5", "1:5,"} {
		_, err := parseLimit(bad, now)
		assert.Error(t, err, bad)
	}
}

func TestTopicMatches(t *testing.T) {
	assert.True(t, topicMatches("v1/devices/me/rpc/request/+", "v1/devices/me/rpc/request/12"))
	assert.False(t, topicMatches("v1/devices/me/rpc/request/+", "v1/devices/me/rpc/request/12/x"))
	assert.True(t, topicMatches("v1/gateway/#", "v1/gateway/rpc"))
	assert.True(t, topicMatches("v1/gateway/rpc", "v1/gateway/rpc"))
	assert.False(t, topicMatches("v1/gateway/rpc", "v1/gateway/attributes"))
}

func timeZero() time.Time { return time.Unix(1000, 0) }
