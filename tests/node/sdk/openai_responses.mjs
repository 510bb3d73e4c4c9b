// The openai package's Responses API against BASE_URL/v1 (echo models): plain, streamed, and
// a function call with its output sent back. Prints one JSON object a line.
import OpenAI from "openai";

const client = new OpenAI({ baseURL: `${process.env.BASE_URL}/v1`, apiKey: "unused",
                            maxRetries: 0, timeout: 30_000 });
const print = (result) => console.log(JSON.stringify(result));
const weather = { type: "function", name: "get_weather", description: "Weather in a city",
  parameters: { type: "object", properties: { city: { type: "string" } } } };

const plain = await client.responses.create({ model: "fast", max_output_tokens: 20,
                                              input: "hello from node ONCE" });
print({ case: "plain", text: plain.output_text, status: plain.status, usage: plain.usage });

const stream = await client.responses.create({ model: "fast", max_output_tokens: 20, stream: true,
                                               input: "streamed from node ONCE" });
const deltas = [], types = [];
let completed = null;
for await (const event of stream) {
  types.push(event.type);
  if (event.type === "response.output_text.delta") deltas.push(event.delta);
  if (event.type === "response.completed") completed = event.response;
}
print({ case: "stream", deltas, first: types[0], last: types.at(-1),
        text: completed?.output_text ?? completed?.output?.[0]?.content?.[0]?.text,
        status: completed?.status });

const called = await client.responses.create({ model: "fast", input: "CALL it", tools: [weather] });
const calls = called.output.filter((item) => item.type === "function_call");
print({ case: "tool_call", status: called.status,
        calls: calls.map((c) => ({ call_id: c.call_id, name: c.name,
                                   arguments: JSON.parse(c.arguments) })) });
const answered = await client.responses.create({
  model: "fast", previous_response_id: called.id, tools: [weather], max_output_tokens: 20,
  input: calls.map((c) => ({ type: "function_call_output", call_id: c.call_id,
                             output: "sunny ONCE" })) });
print({ case: "tool_result", text: answered.output_text, status: answered.status });
