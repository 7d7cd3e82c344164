// `graphql` tools from Node against a real GraphQL server (the `graphql` package behind
// node:http on 127.0.0.1): a python-utcp-shaped manual call template discovered by
// introspection, a query, a mutation, an explicit document with `$id`, and errors.
import test from 'node:test'
import assert from 'node:assert/strict'
import http from 'node:http'

import { buildSchema, graphql } from 'graphql'

import { Engine, codes } from 'utp-runtime'
import { rejectsWith } from './helpers.mjs'

const schema = buildSchema(`
  enum Role { ADMIN MEMBER }
  type Address { city: String! }
  type User { id: ID! name: String! role: Role! address: Address }
  type Query { user(id: ID!): User  add(a: Int!, b: Int!): Int!  broken: String }
  type Mutation { rename(id: ID!, name: String!): User }
`)
const alice = { id: '1', name: 'Alice', role: 'ADMIN', address: { city: 'Paris' } }
const rootValue = {
  user: ({ id }) => (id === '1' ? alice : null),
  add: ({ a, b }) => a + b,
  broken: () => {
    throw new Error('broken on purpose')
  },
  rename: ({ id, name }) => (id === '1' ? { ...alice, name } : null),
}

async function server(t) {
  const received = []
  const srv = http.createServer((req, res) => {
    let body = ''
    req.on('data', (chunk) => (body += chunk))
    req.on('end', async () => {
      const request = JSON.parse(body)
      received.push(request)
      const result = await graphql({
        schema,
        rootValue,
        source: request.query,
        variableValues: request.variables,
        operationName: request.operationName,
      })
      res.writeHead(200, { 'content-type': 'application/json' })
      res.end(JSON.stringify(result))
    })
  })
  await new Promise((resolve) => srv.listen(0, '127.0.0.1', resolve))
  t.after(() => {
    srv.closeAllConnections()
    return new Promise((resolve) => srv.close(resolve))
  })
  return { url: `http://127.0.0.1:${srv.address().port}/graphql`, received }
}

test('a graphql manual call template is introspected and its tools called', async (t) => {
  const { url, received } = await server(t)
  const engine = new Engine({ variables: { api_id: 'HIJACKED' } })
  t.after(() => engine.close())
  const tools = await engine.registerManual({ name: 'gql', call_template_type: 'graphql', url })
  assert.deepEqual(tools.sort(), ['gql.add', 'gql.broken', 'gql.rename', 'gql.user'])
  assert.equal(engine.tool('gql.user').tool_call_template.selection_set, '{ id name role address { city } }')

  assert.deepEqual(await engine.callTool('gql.user', { id: '1' }), { user: alice })
  assert.equal((await engine.callTool('gql.rename', { id: '1', name: 'Ann' })).rename.name, 'Ann')
  assert.match(received.at(-1).query, /^mutation\(\$id: ID!, \$name: String!\) \{ rename\(/)
  await rejectsWith(engine.callTool('gql.broken', {}), codes.TOOL_FAILED, /broken on purpose/)
  await rejectsWith(engine.callTool('gql.add', { a: 'two', b: 1 }), codes.VALIDATION_FAILED)

  // A python-utcp manual with an explicit document: its `$id` is GraphQL's, not a variable.
  const query = 'query GetUser($id: ID!) { user(id: $id) { name } }'
  await engine.registerManual({
    name: 'api',
    tools: [{ name: 'get_user', tool_call_template: { call_template_type: 'graphql', url, query } }],
  })
  assert.deepEqual(await engine.callTool('api.get_user', { id: '1' }), { user: { name: 'Alice' } })
  assert.equal(received.at(-1).query, query)
})

test('bad graphql templates are named', async (t) => {
  const engine = new Engine()
  t.after(() => engine.close())
  await rejectsWith(
    engine.registerManual({ call_template_type: 'graphql', url: 'http://127.0.0.1:9/', operation_type: 'read' }, 'g'),
    codes.INVALID_ARGUMENT,
    /`operation_type` must be query, mutation or subscription/,
  )
})
