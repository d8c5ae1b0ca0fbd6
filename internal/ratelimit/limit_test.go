package ratelimit

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseValid(t *testing.T) {
	tests := []struct {
		spec string
		want []Window
		str  string
	}{
		{"20:1", []Window{{20, 1}}, "20:1"},
		{"20:1,600:60", []Window{{20, 1}, {600, 60}}, "20:1,600:60"},
		{" 20 : 1 ,\t600:60\n", []Window{{20, 1}, {600, 60}}, "20:1,600:60"},
		{"20:600", []Window{{20, 600}}, "20:600"},
		{"5:1,5:1", []Window{{5, 1}, {5, 1}}, "5:1,5:1"},
	}
	for _, tt := range tests {
		t.Run(tt.spec, func(t *testing.T) {
			l, err := Parse(tt.spec)
			require.NoError(t, err)
			assert.Equal(t, tt.want, l.Windows())
			assert.False(t, l.Unlimited())
			assert.Equal(t, tt.str, l.String())
			again, err := Parse(l.String())
			require.NoError(t, err)
			assert.True(t, again.equal(l), "String must round-trip")
		})
	}
}

func TestParseUnlimited(t *testing.T) {
	for _, spec := range []string{"", "   ", "\t\n"} {
		l, err := Parse(spec)
		require.NoError(t, err, "%q", spec)
		assert.True(t, l.Unlimited(), "%q", spec)
		assert.Empty(t, l.Windows())
		assert.Equal(t, "", l.String())
	}
	assert.True(t, Limit{}.Unlimited())
}

func TestParseInvalid(t *testing.T) {
	for _, spec := range []string{
		"x", "10", "10:0", "-1:5", "10:5,", "a:b", ",", ",10:5", "10:5,,20:1",
		"0:5", ":5", "10:", "1:-1", "10:5:3", "10:1.5", "1 0:5", "10:99999999999999999999",
		"10:10000000000",
	} {
		_, err := Parse(spec)
		assert.Error(t, err, "%q", spec)
	}
}

func TestWindowsIsACopy(t *testing.T) {
	l, err := Parse("20:1")
	require.NoError(t, err)
	l.Windows()[0].Capacity = 1
	assert.Equal(t, "20:1", l.String())
}

func TestParseLimits(t *testing.T) {
	l, err := ParseLimits("100:600", "", " 200:600 ")
	require.NoError(t, err)
	assert.Equal(t, "100:600", l.Messages.String())
	assert.True(t, l.TelemetryMessages.Unlimited())
	assert.Equal(t, "200:600", l.TelemetryDataPoints.String())
	assert.False(t, l.Unlimited())
	assert.True(t, Limits{}.Unlimited())

	_, err = ParseLimits("1:1", "bad", "")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "telemetryMessages")
}

func TestKindString(t *testing.T) {
	assert.Equal(t, "messages", KindMessages.String())
	assert.Equal(t, "telemetryMessages", KindTelemetryMessages.String())
	assert.Equal(t, "telemetryDataPoints", KindTelemetryDataPoints.String())
	assert.Equal(t, "Kind(7)", Kind(7).String())
}
