"""Demo weather MCP server over stdio: ``python -m proxy.demo.weather``.

All data is fake but deterministic: it is derived from a hash of the city name, so
the same city always reports the same weather and tests can assert on it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Final

from mcp.server.mcpserver import MCPServer
from pydantic import BaseModel, Field

CITIES: Final = ("Amsterdam", "Berlin", "Lisbon", "Nairobi", "Osaka", "Reykjavik", "Santiago", "Toronto")
CONDITIONS: Final = ("sunny", "partly cloudy", "overcast", "light rain", "heavy rain", "snow", "fog", "windy")

mcp = MCPServer(
    "weather",
    version="1.0.0",
    instructions="Fake, deterministic weather for any city. Try get_weather or get_forecast.",
    log_level="WARNING",
)


class Weather(BaseModel):
    """Current conditions for one city."""

    city: str
    condition: str
    temperature_c: float
    humidity_pct: int
    wind_kph: float


class DayForecast(BaseModel):
    """One day of a forecast; day 1 is tomorrow."""

    day: int
    condition: str
    high_c: float
    low_c: float
    precipitation_pct: int


class Forecast(BaseModel):
    """A multi-day forecast for one city."""

    city: str
    days: list[DayForecast]


def _digest(city: str, salt: str) -> bytes:
    # Normalised so "berlin " and "Berlin" agree; sha256 only as a stable spreader, not for security.
    return hashlib.sha256(f"{city.strip().casefold()}|{salt}".encode()).digest()


def _weather_for(city: str) -> Weather:
    d = _digest(city, "now")
    return Weather(
        city=city.strip(),
        condition=CONDITIONS[d[0] % len(CONDITIONS)],
        temperature_c=round(-10 + d[1] / 255 * 45, 1),
        humidity_pct=20 + d[2] % 80,
        wind_kph=round(d[3] / 255 * 60, 1),
    )


def _day_for(city: str, day: int) -> DayForecast:
    d = _digest(city, f"day{day}")
    low = round(-12 + d[1] / 255 * 35, 1)
    return DayForecast(
        day=day,
        condition=CONDITIONS[d[0] % len(CONDITIONS)],
        high_c=round(low + 2 + d[2] / 255 * 10, 1),
        low_c=low,
        precipitation_pct=d[3] % 101,
    )


City = Annotated[str, Field(min_length=1, description="City name, e.g. 'Berlin'.")]


@mcp.tool(description="Current (fake, deterministic) weather for a city.")
def get_weather(city: City) -> Weather:
    return _weather_for(city)


@mcp.tool(description="A day-by-day (fake, deterministic) forecast for a city, 1 to 7 days ahead.")
def get_forecast(
    city: City,
    days: Annotated[int, Field(ge=1, le=7, description="Number of days to forecast.")] = 3,
) -> Forecast:
    return Forecast(city=city.strip(), days=[_day_for(city, day) for day in range(1, days + 1)])


@mcp.resource(
    "weather://cities", name="cities", description="Cities with known weather.", mime_type="application/json"
)
def cities() -> str:
    return json.dumps(list(CITIES))


@mcp.prompt(description="Ask the model for a short weather report on a city using the weather tools.")
def weather_report(city: str) -> str:
    return (
        f"Write a short, friendly weather report for {city}. "
        f"Call get_weather for the current conditions and get_forecast for the next three days, "
        f"then summarise both in at most five sentences."
    )


if __name__ == "__main__":
    mcp.run()  # stdio; the SDK points fd 1 at stderr while serving, so stray prints cannot corrupt the wire
